//! `--network`: a network name or ID, or Docker's long form
//! `name=NET,alias=NAME[,alias=NAME...]` (`target=` is a synonym of
//! `name=`).

/// A network to attach, and the aliases the service has on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFlag {
    /// The network's name or ID.
    pub network: String,
    /// Names the service answers to on it, besides its own.
    pub aliases: Vec<String>,
}

/// Parses one `--network` value.
pub fn parse_network(text: &str) -> Result<NetworkFlag, String> {
    if !text.contains('=') {
        if text.is_empty() || text.contains(',') {
            return Err(format!("invalid network {text:?}: expected NET or name=NET,alias=NAME"));
        }
        return Ok(NetworkFlag { network: text.to_string(), aliases: Vec::new() });
    }
    let mut network = None;
    let mut aliases = Vec::new();
    for field in text.split(',') {
        match field.split_once('=') {
            Some(("name" | "target", value)) if !value.is_empty() => network = Some(value.to_string()),
            Some(("alias", value)) if !value.is_empty() => aliases.push(value.to_string()),
            _ => {
                return Err(format!(
                    "invalid network field {field:?} in {text:?}: expected name=NET and alias=NAME"
                ))
            }
        }
    }
    let network = network.ok_or_else(|| format!("invalid network {text:?}: name=NET is missing"))?;
    Ok(NetworkFlag { network, aliases })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms() {
        assert_eq!(parse_network("demonet"), Ok(NetworkFlag { network: "demonet".into(), aliases: vec![] }));
        assert_eq!(
            parse_network("name=demonet,alias=db,alias=store"),
            Ok(NetworkFlag { network: "demonet".into(), aliases: vec!["db".into(), "store".into()] })
        );
        assert_eq!(parse_network("target=n").unwrap().network, "n");
        for bad in ["", "alias=db", "name=n,alias=", "name=n,color=red", "a,b", "name="] {
            assert!(parse_network(bad).is_err(), "{bad}");
        }
    }
}
