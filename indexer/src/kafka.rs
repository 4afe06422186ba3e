//! The settings every Kafka client of the indexer shares (consumer, dead-letter producer,
//! `setup`'s admin client): brokers, `kafka.properties`, and `kafka.security.*` (TLS, SASL).

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;

use crate::config::IndexerConfig;

/// A client configuration with the brokers, the pass-through properties and the security
/// settings (the `*_file` secrets are read now). `client_id` names the client in broker logs.
pub fn base_config(config: &IndexerConfig, client_id: &str) -> Result<ClientConfig, KafkaError> {
    let k = &config.kafka;
    let mut c = ClientConfig::new();
    for (key, value) in &k.properties {
        c.set(key.trim(), value.expose());
    }
    k.security.apply(&mut c).map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
    c.set("bootstrap.servers", k.brokers.join(",")).set("client.id", client_id);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_applies_to_every_client() {
        let mut config = IndexerConfig::default();
        config.kafka.security.protocol = sluice_common::kafka::SecurityProtocol::SaslSsl;
        config.kafka.security.sasl.username = "indexer".into();
        config.kafka.security.sasl.password = "pw".into();
        let c = base_config(&config, "x").unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.username"), Some("indexer"));
        config.kafka.security.sasl.password_file = Some("/nonexistent/pw".into());
        let err = base_config(&config, "x").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }
}
