//! The settings tree: defaults, milliseconds, unknown fields, problems.

use std::time::Duration;

use courier_upstream::{Balance, ServiceConfig};

#[test]
fn defaults_and_milliseconds() {
    let config: ServiceConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, ServiceConfig::default());
    assert_eq!(config.max_concurrent_per_instance, 256);
    assert_eq!(config.breaker.half_open_probes, 3);
    assert_eq!(config.outlier.max_ejection, Duration::from_secs(300));
    assert_eq!(config.problem(), None);

    let config: ServiceConfig = serde_json::from_str(
        r#"{"balance": "p2c_ewma", "connect_timeout": 250,
            "health_check": {"path": "/ready", "interval": 100},
            "breaker": {"open_for": 1500}}"#,
    )
    .unwrap();
    assert_eq!(config.balance, Balance::P2cEwma);
    assert_eq!(config.connect_timeout, Duration::from_millis(250));
    let check = config.health_check.clone().unwrap();
    assert_eq!(check.interval, Duration::from_millis(100));
    assert_eq!(check.unhealthy_threshold, 3);
    assert_eq!(config.breaker.open_for, Duration::from_millis(1500));
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["connect_timeout"], 250);
    assert_eq!(json["balance"], "p2c_ewma");
}

#[test]
fn unknown_fields_and_problems() {
    assert!(serde_json::from_str::<ServiceConfig>(r#"{"balanse": "weighted"}"#).is_err());
    assert!(serde_json::from_str::<ServiceConfig>(r#"{"breaker": {"rate": 1}}"#).is_err());
    let mut config = ServiceConfig::default();
    config.breaker.failure_rate = 1.5;
    assert!(config.problem().unwrap().contains("failure_rate"));
    let config = ServiceConfig {
        max_concurrent_per_instance: 0,
        ..ServiceConfig::default()
    };
    assert!(config
        .problem()
        .unwrap()
        .contains("max_concurrent_per_instance"));
    let mut config = ServiceConfig::default();
    config.outlier.max_ejection = Duration::from_secs(1);
    assert!(config.problem().unwrap().contains("max_ejection"));
}
