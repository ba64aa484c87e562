//! How a failed command's error is printed: the whole chain of causes, each said once.
//!
//! Errors built with thiserror often show their source in their own message (`cannot listen on
//! {addr}: {source}`) and also return it as `source()`, so printing the chain as `{:#}` says
//! the cause twice ("Address already in use (os error 98): Address already in use (os error
//! 98)"). Here a cause whose text is already in the message is not repeated.

/// The message and every cause not already part of it, joined with `: `.
pub(crate) fn render(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if c.is_empty() || out.contains(&c) {
            continue;
        }
        out.push_str(": ");
        out.push_str(&c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on {addr}: {source}")]
    struct Bind {
        addr: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_in_the_message_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(Bind {
            addr: "127.0.0.1:9191",
            source: io,
        });
        assert_eq!(
            render(&e),
            "cannot listen on 127.0.0.1:9191: Address already in use"
        );
        assert_eq!(
            format!("{e:#}").matches("Address already in use").count(),
            2,
            "what anyhow's {{:#}} alone prints"
        );
    }

    #[test]
    fn context_and_causes_not_in_the_message_are_kept() {
        let r: Result<(), std::io::Error> = Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "No such file or directory",
        ));
        let e = r.context("reading policy.yaml").expect_err("error");
        assert_eq!(render(&e), "reading policy.yaml: No such file or directory");
    }
}
