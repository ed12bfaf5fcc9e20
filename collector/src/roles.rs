//! API token roles: `admin`, `billing`, `customer:<id>`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Everything, including administration.
    Admin,
    /// Reads every customer's data and imports reports.
    Billing,
    /// Reads one customer's own usage, statements, licenses and agents.
    Customer(String),
}

impl Role {
    /// The customer this role is confined to, if any.
    pub fn customer(&self) -> Option<&str> {
        match self {
            Role::Customer(c) => Some(c),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin => f.write_str("admin"),
            Role::Billing => f.write_str("billing"),
            Role::Customer(c) => write!(f, "customer:{c}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("role must be admin, billing or customer:<customer id>, got {0:?}")]
pub struct RoleParseError(String);

impl FromStr for Role {
    type Err = RoleParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "billing" => Ok(Role::Billing),
            _ => match s.strip_prefix("customer:") {
                Some(id) if crate::ids::is_valid_id(id) => Ok(Role::Customer(id.to_string())),
                _ => Err(RoleParseError(s.chars().take(80).collect())),
            },
        }
    }
}
