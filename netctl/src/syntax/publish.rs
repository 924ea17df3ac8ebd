//! `--publish` in Docker's four forms.

/// Parses a `--publish` value in any of Docker's forms (published port 0 =
/// assigned by the manager).
pub fn parse_publish(text: &str) -> Result<netctl_proto::PortConfig, String> {
    let number = |what: &str, value: &str| -> Result<u32, String> {
        let port: u32 = value.parse().map_err(|_| format!("invalid {what} port {value:?} in {text:?}"))?;
        if (1..=65535).contains(&port) {
            Ok(port)
        } else {
            Err(format!("invalid {what} port {port} in {text:?}: expected 1-65535"))
        }
    };
    let mut port = netctl_proto::PortConfig { protocol: "tcp".into(), ..Default::default() };
    if text.contains('=') {
        for field in text.split(',') {
            match field.split_once('=') {
                Some(("published", value)) => port.published_port = number("published", value)?,
                Some(("target", value)) => port.target_port = number("target", value)?,
                Some(("protocol", value)) => port.protocol = value.to_string(),
                Some(("mode", mode @ ("ingress" | "host"))) => port.mode = mode.to_string(),
                _ => {
                    return Err(format!(
                        "invalid field {field:?} in {text:?}: expected published=, target=, protocol=, mode=ingress|host"
                    ))
                }
            }
        }
    } else {
        let (ports, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
        port.protocol = protocol.to_string();
        match ports.split_once(':') {
            Some((published, target)) => {
                port.published_port = number("published", published)?;
                port.target_port = number("target", target)?;
            }
            None => port.target_port = number("target", ports)?,
        }
    }
    if port.target_port == 0 {
        return Err(format!("invalid port {text:?}: the target port is missing"));
    }
    if port.protocol != "tcp" && port.protocol != "udp" {
        return Err(format!("invalid protocol {:?} in {text:?}: expected tcp or udp", port.protocol));
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_takes_dockers_forms() {
        let port = |protocol: &str, published, target| netctl_proto::PortConfig {
            protocol: protocol.into(),
            published_port: published,
            target_port: target,
            ..Default::default()
        };
        assert_eq!(parse_publish("8080:80"), Ok(port("tcp", 8080, 80)));
        assert_eq!(parse_publish("8080:80/udp"), Ok(port("udp", 8080, 80)));
        assert_eq!(parse_publish("published=8080,target=80,protocol=tcp"), Ok(port("tcp", 8080, 80)));
        assert_eq!(parse_publish("target=80"), Ok(port("tcp", 0, 80)));
        assert_eq!(parse_publish("80"), Ok(port("tcp", 0, 80)));
        for bad in ["0:80", "70000:80", "8080:0", "published=8080", "8080:80/sctp", "x:80", "bogus=1"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
        assert!(parse_publish("published=8080").unwrap_err().contains("target port is missing"));
        let host = parse_publish("published=8080,target=80,mode=host").unwrap();
        assert_eq!((host.published_port, host.mode.as_str()), (8080, "host"));
        assert!(parse_publish("published=8080,target=80,mode=bridge")
            .unwrap_err()
            .contains("mode=ingress|host"));
    }
}
