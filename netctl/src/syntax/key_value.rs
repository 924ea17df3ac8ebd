//! `KEY=VALUE` pairs (`--env`, `--opt`).

/// Parses `key=value`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("invalid option {text:?}: expected key=value")),
    }
}

/// `--label-add`: KEY=VALUE, or KEY for an empty value (as Docker takes it).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        None if !text.is_empty() => Ok((text.to_string(), String::new())),
        _ => Err(format!("invalid label {text:?}: expected KEY=VALUE or KEY")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_key_value_pairs() {
        assert_eq!(parse_key_value("mtu=1400"), Ok(("mtu".into(), "1400".into())));
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("mtu").is_err());
        assert!(parse_key_value("=1").is_err());
    }

    #[test]
    fn labels_may_have_no_value() {
        assert_eq!(parse_label("zone=east"), Ok(("zone".into(), "east".into())));
        assert_eq!(parse_label("ssd"), Ok(("ssd".into(), String::new())));
        assert!(parse_label("=x").is_err() && parse_label("").is_err());
    }
}
