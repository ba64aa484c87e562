//! JSON values as protobuf `Struct`/`Value` (dynamic metadata, filter metadata) and back, as
//! protojson maps them: numbers are doubles.

use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use serde_json::{json, Map, Value as Json};

pub fn to_proto(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_proto).collect(),
        }),
        Json::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

pub fn to_struct(o: &Map<String, Json>) -> Struct {
    Struct {
        fields: o.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
    }
}

pub fn from_proto(v: &Value) -> Json {
    match &v.kind {
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(from_proto).collect()),
        Some(Kind::StructValue(s)) => Json::Object(from_struct(s)),
        _ => Json::Null,
    }
}

pub fn from_struct(s: &Struct) -> Map<String, Json> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_proto(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_protobuf() {
        let v = json!({"a": [true, null, "x", {"b": 1.5}], "n": 2.0});
        let Json::Object(m) = &v else { unreachable!() };
        assert_eq!(Json::Object(from_struct(&to_struct(m))), v);
    }
}
