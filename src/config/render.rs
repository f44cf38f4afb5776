//! Rendering the effective configuration as TOML (`check-config`), secrets redacted.

use super::Settings;

impl Settings {
    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        // serde_json first: toml cannot be produced by the `config` crate, and our
        // Serialize impls already redact secrets.
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if !self.implicit_account
            && let Some(root) = value.as_object_mut()
        {
            root.remove("puppet");
            root.insert(
                "accounts".into(),
                serde_json::to_value(&self.accounts).unwrap_or_default(),
            );
        }
        render_toml(&value)
    }
}

/// The configuration as TOML, through the `toml` crate: JSON nulls (unset options)
/// are left out, as TOML has none.
fn render_toml(value: &serde_json::Value) -> String {
    fn without_nulls(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => serde_json::Value::Object(
                map.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), without_nulls(v)))
                    .collect(),
            ),
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(without_nulls).collect())
            }
            other => other.clone(),
        }
    }
    toml::to_string(&without_nulls(value))
        .unwrap_or_else(|e| format!("# the configuration cannot be shown as TOML: {e}\n"))
}
