//! Placement constraints in Docker's expressions (pure): `node.id==ID`,
//! `node.hostname!=NAME`, `node.role==worker`, `node.labels.KEY==VALUE`;
//! a service's constraints all hold on a node its tasks may run on.

use netctl_proto::{printable, Node};
use std::fmt;

/// The longest constraint expression accepted.
const MAX_CONSTRAINT_CHARS: usize = 256;

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attribute {
    Id,
    Hostname,
    Role,
    Label(String),
}

/// One parsed constraint: an attribute of the node, `==` or `!=`, a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    attribute: Attribute,
    equal: bool,
    value: String,
}

/// Why a constraint expression was refused; the message quotes it and
/// names the part at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConstraintError {
    /// No `==` or `!=` in it.
    #[error("invalid constraint {0:?}: expected KEY==VALUE or KEY!=VALUE")]
    NoOperator(String),
    /// A key netctl's nodes do not have.
    #[error("invalid constraint {expression:?}: unknown key {key:?} (expected node.id, node.hostname, node.role or node.labels.<label>)")]
    UnknownKey {
        /// The whole expression.
        expression: String,
        /// The key at fault.
        key: String,
    },
    /// Nothing after the operator.
    #[error("invalid constraint {0:?}: no value after the operator")]
    NoValue(String),
}

impl Constraint {
    /// Parses one expression (spaces around the key and value are ignored).
    pub fn parse(text: &str) -> Result<Self, ConstraintError> {
        let shown = printable(text, MAX_CONSTRAINT_CHARS);
        let (key, equal, value) = match (text.find("=="), text.find("!=")) {
            (Some(at), _) if !text[..at].ends_with('!') => (&text[..at], true, &text[at + 2..]),
            (_, Some(at)) => (&text[..at], false, &text[at + 2..]),
            _ => return Err(ConstraintError::NoOperator(shown)),
        };
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() || value.contains("==") || value.contains("!=") {
            return Err(ConstraintError::NoValue(shown));
        }
        let attribute = match key {
            "node.id" => Attribute::Id,
            "node.hostname" => Attribute::Hostname,
            "node.role" => Attribute::Role,
            _ => match key.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => Attribute::Label(label.to_string()),
                _ => {
                    let key = printable(key, MAX_CONSTRAINT_CHARS);
                    return Err(ConstraintError::UnknownKey { expression: shown, key });
                }
            },
        };
        Ok(Self { attribute, equal, value: value.to_string() })
    }

    /// Whether it holds on `node`. A label the node lacks equals nothing.
    pub fn holds(&self, node: &Node) -> bool {
        let actual = match &self.attribute {
            Attribute::Id => Some(node.id.as_str()),
            Attribute::Hostname => Some(node.hostname.as_str()),
            Attribute::Role => Some(role(node)),
            Attribute::Label(key) => node.labels.get(key).map(String::as_str),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.attribute {
            Attribute::Id => "node.id".to_string(),
            Attribute::Hostname => "node.hostname".to_string(),
            Attribute::Role => "node.role".to_string(),
            Attribute::Label(label) => format!("node.labels.{label}"),
        };
        write!(f, "{key}{}{}", if self.equal { "==" } else { "!=" }, self.value)
    }
}

/// A node's role as constraints and `node inspect` name it: `manager` for
/// the node on a manager's host, `worker` otherwise.
pub fn role(node: &Node) -> &'static str {
    if node.manager_host {
        "manager"
    } else {
        "worker"
    }
}

/// Parses every expression, each written back in one normal form.
pub fn parse_all(texts: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
    texts.iter().map(|text| Constraint::parse(text)).collect()
}

/// The first of `constraints` that does not hold on `node`, if any.
pub fn first_unmet<'a>(constraints: &'a [Constraint], node: &Node) -> Option<&'a Constraint> {
    constraints.iter().find(|constraint| !constraint.holds(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            hostname: format!("host-{id}"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn docker_expressions_are_parsed_and_written_back() {
        for (text, normal) in [
            ("node.hostname==node1", "node.hostname==node1"),
            ("node.id != abc", "node.id!=abc"),
            (" node.labels.zone == a ", "node.labels.zone==a"),
            ("node.role==manager", "node.role==manager"),
            ("node.labels.rack.row==3=b", "node.labels.rack.row==3=b"),
        ] {
            assert_eq!(Constraint::parse(text).unwrap().to_string(), normal, "{text}");
        }
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let message = |text: &str| Constraint::parse(text).unwrap_err().to_string();
        assert!(message("node.hostname=node1").contains("expected KEY==VALUE or KEY!=VALUE"));
        assert!(message("node.lables.zone==a").contains("unknown key \"node.lables.zone\""));
        assert!(message("node.labels.==a").contains("unknown key \"node.labels.\""));
        assert!(message("engine.labels.x==1").contains("unknown key \"engine.labels.x\""));
        assert!(message("node.id==").contains("no value after the operator"));
        assert!(message("node.id==a==b").contains("no value after the operator"));
        assert!(message("").contains("expected KEY==VALUE"));
    }

    #[test]
    fn constraints_match_ids_hostnames_roles_and_labels() {
        let a = node("a", &[("zone", "east")]);
        let b = Node { manager_host: true, ..node("b", &[]) };
        let holds = |text: &str, node: &Node| Constraint::parse(text).unwrap().holds(node);
        assert!(holds("node.id==a", &a) && !holds("node.id==a", &b));
        assert!(holds("node.hostname!=host-a", &b) && !holds("node.hostname!=host-a", &a));
        assert!(holds("node.role==manager", &b) && holds("node.role==worker", &a));
        assert!(holds("node.labels.zone==east", &a) && !holds("node.labels.zone==east", &b));
        // A missing label is unequal to every value.
        assert!(holds("node.labels.zone!=east", &b));
        let both = parse_all(&["node.labels.zone==east".into(), "node.id!=a".into()]).unwrap();
        assert_eq!(first_unmet(&both, &a).unwrap().to_string(), "node.id!=a");
        assert_eq!(first_unmet(&both, &b).unwrap().to_string(), "node.labels.zone==east");
    }
}
