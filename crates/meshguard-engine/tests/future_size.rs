//! A decision's future stays small. Every front end awaits it per request and the async
//! machinery moves it (tonic's async_trait boxes it, tokio polls it in place): before the
//! AuthConfig chains and the JWKS fetch were boxed, the future was 10.7 KB and callgrind showed
//! memcpy as the largest cost of a gRPC Check (19% of the server's instructions). Structural,
//! not timed: it fails when a large future is inlined into the common path again.

#[test]
fn the_decision_future_is_small() {
    let state = meshguard_engine::State::new(
        meshguard_engine::Embedded(vec![]),
        meshguard_policy::MeshConfig::default(),
        reqwest::Client::new(),
    )
    .expect("an empty set loads");
    let g = state.current();
    let req = meshguard_policy::Request::default();
    let decide = std::mem::size_of_val(&meshguard_engine::decide(&g, &req));
    let id = meshguard_policy::Identity::default();
    let authn = std::mem::size_of_val(&g.authn.authenticate_request(&g.set, &req, &id));
    assert!(
        decide <= 2048 && authn <= 2048,
        "decide future {decide} bytes, authenticate_request {authn} bytes: box the rare, large awaits (AuthConfig chains, key fetches)"
    );
}
