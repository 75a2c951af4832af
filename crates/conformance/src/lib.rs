//! The engine conformance suite: the executable definition of Courier's
//! semantics, written once against the [`Engine`] trait.
//!
//! Every behaviour is one `pub async fn` taking a `&dyn EngineFactory`, in a
//! module per area. An engine crate runs them all, one `#[test]` each, with
//!
//! ```ignore
//! // tests/conformance.rs of an engine crate (which needs `tokio` as a dependency)
//! fn crate_factory() -> MyFactory { MyFactory::new() }
//! courier_conformance::conformance_tests!(crate_factory());
//! ```
//!
//! which expands to one module per area and one `#[tokio::test]` per
//! behaviour, e.g. `leases::expired_lease_token_is_lease_lost`.
//!
//! # Time
//! The tests run on tokio's paused clock and open engines on
//! [`Clock::tokio`], so `tokio::time::advance` moves the engine's time; no test
//! sleeps for real. Waiting for something the engine does on its own (a
//! dead-letter worker, a tail) polls with a real-time deadline that is not a
//! tokio timer ([`helpers::within`], [`helpers::wait_for`]), because a pending
//! tokio timer would make the paused clock jump whenever the runtime idles
//! while the engine waits for its disk or network.
//!
//! # Features
//! Behaviours that need an optional [`Feature`](courier_core::Feature) the
//! engine does not declare are skipped (with a line on stderr saying so);
//! [`capabilities::missing_features_are_refused_and_declared_ones_accepted`]
//! checks that such requests are refused instead.

pub mod capabilities;
pub mod dead_letters;
pub mod dedup;
pub mod delays;
pub mod errors;
pub mod helpers;
pub mod leases;
pub mod ordering;
pub mod publish;
pub mod push;
pub mod reject;
pub mod release;
pub mod retry;
pub mod seek;
pub mod tails;
pub mod updates;

use std::sync::Arc;

use async_trait::async_trait;
use courier_core::{Clock, Engine};

/// How the suite gets engines to test.
#[async_trait]
pub trait EngineFactory: Send + Sync {
    /// A fresh engine with no topics. `clock` is the clock the engine must use
    /// (tests pass `Clock::tokio()` under a paused runtime, or `Clock::manual`).
    async fn open(&self, clock: Clock) -> Arc<dyn Engine>;
    /// Closes `engine` (shutdown) and opens it again on the same storage (for
    /// durability checks); `None` if the engine cannot.
    async fn reopen(&self, engine: Arc<dyn Engine>, clock: Clock) -> Option<Arc<dyn Engine>>;
    /// An engine whose backend cannot be reached (a NATS/Redis URL with
    /// nothing listening); `None` when the engine has no backend to lose (embedded).
    async fn unreachable(&self) -> Option<Arc<dyn Engine>>;
    /// Makes the engine apply retention now (engines enforce it periodically).
    async fn enforce_retention(&self, engine: &Arc<dyn Engine>);
}

/// Every behaviour of the suite, by module, with the runtime it needs:
/// `paused` (tokio's paused clock) or `realtime`. Calls
/// `$callback!((args) module { test: flavor, ... } ...)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __behaviours {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            publish {
                receipts_are_sequential_unique_and_durable: paused,
                fan_out_delivers_every_message_to_every_subscription: paused,
                competing_consumers_never_share_a_lease: paused,
                subscription_in_flight_limit: paused,
                per_consumer_in_flight_limit: paused,
                an_empty_pull_waits_out_its_wait: paused,
                a_waiting_pull_wakes_on_publish: realtime,
            }
            leases {
                ack_with_current_token_settles_the_message: paused,
                expired_lease_token_is_lease_lost: paused,
                replayed_message_token_is_not_leased: paused,
                settled_or_foreign_token_is_not_found: paused,
                outcomes_follow_token_order: paused,
                stale_and_current_tokens_in_one_call: paused,
                extend_keeps_the_lease_past_its_old_deadline: paused,
                acks_and_leases_survive_reopen: paused,
            }
            retry {
                nack_redelivers_after_initial_backoff: paused,
                backoff_grows_exponentially_per_attempt: paused,
                backoff_is_capped_at_max_backoff: paused,
                nack_with_explicit_delay: paused,
                an_expired_lease_is_retried_as_the_next_attempt: paused,
            }
            release {
                release_keeps_the_attempt_count_and_redelivers_at_once: paused,
                release_on_the_last_attempt_does_not_dead_letter: paused,
                release_of_a_stale_token_is_lease_lost: paused,
                release_respects_ordering_keys: paused,
            }
            reject {
                reject_dead_letters_at_once_with_the_error: paused,
                reject_of_a_stale_token_is_lease_lost: paused,
                reject_then_replay_brings_the_message_back_with_fresh_attempts: paused,
            }
            push {
                push_settings_round_trip: paused,
                invalid_push_settings_are_refused: paused,
            }
            dead_letters {
                exhausted_message_is_dead_lettered_with_headers: paused,
                an_expired_lease_can_exhaust_attempts: paused,
                max_attempts_zero_never_dead_letters: paused,
                dead_letter_topic_can_be_chosen: paused,
                replay_brings_dead_letters_back_with_fresh_attempts: paused,
                replay_up_to_limits_the_replay: paused,
            }
            ordering {
                one_message_per_key_in_flight_in_order: paused,
                a_failed_message_blocks_its_key_until_redelivered: paused,
                key_blocked_backlog_does_not_hide_other_keys: paused,
            }
            delays {
                delayed_message_is_not_delivered_before_its_delay: paused,
                deliver_at_is_an_engine_clock_time: paused,
                a_waiting_pull_wakes_when_the_delay_passes: paused,
                delayed_backlog_does_not_hide_a_ready_message: paused,
            }
            dedup {
                same_id_within_window_returns_original_receipt: paused,
                same_id_after_window_is_a_new_message: paused,
                dedup_survives_reopen: paused,
            }
            seek {
                seek_by_sequence_redelivers_from_there: paused,
                seek_forward_counts_earlier_messages_as_acked: paused,
                seek_by_time: paused,
                start_positions: paused,
            }
            tails {
                tail_from_earliest: paused,
                tail_from_seq: paused,
                tail_from_time: paused,
                tail_new_only: paused,
                tail_after_retention_starts_with_a_gap: paused,
                tail_creates_no_subscription: paused,
            }
            capabilities {
                missing_features_are_refused_and_declared_ones_accepted: paused,
                dedup_window_beyond_the_engine_limit_is_refused: paused,
            }
            updates {
                update_ack_deadline: paused,
                update_retry_policy: paused,
                update_max_in_flight: paused,
                update_dead_letter_topic: paused,
            }
            errors {
                unreachable_backend_is_unavailable: paused,
                unknown_topics_and_subscriptions_are_not_found: paused,
                conflicting_definitions_are_refused: paused,
                invalid_requests_are_refused: paused,
                calls_after_shutdown_are_refused: paused,
            }
        }
    };
}

/// One `#[tokio::test]` per behaviour of the suite, each calling it with
/// `&$factory` (an expression evaluated afresh in every test; its type must
/// implement [`EngineFactory`]). Expands to one module per area; they see
/// the caller's names through `use super::*`. The calling crate needs `tokio`
/// (with the `macros` and `rt` features) as a dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__behaviours!(__conformance_modules!($factory));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_modules {
    (($factory:expr) $($module:ident { $($test:ident : $flavor:ident),* $(,)? })*) => {
        $(
            mod $module {
                #[allow(unused_imports)]
                use super::*;
                $( $crate::__conformance_test!($flavor, $module, $test, $factory); )*
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    (paused, $module:ident, $test:ident, $factory:expr) => {
        #[tokio::test(start_paused = true)]
        async fn $test() {
            let factory = $factory;
            $crate::$module::$test(&factory).await;
        }
    };
    (realtime, $module:ident, $test:ident, $factory:expr) => {
        #[tokio::test]
        async fn $test() {
            let factory = $factory;
            $crate::$module::$test(&factory).await;
        }
    };
}

/// The behaviours as `(module, name)` pairs.
#[doc(hidden)]
#[macro_export]
macro_rules! __behaviour_names {
    (() $($module:ident { $($test:ident : $flavor:ident),* $(,)? })*) => {
        &[ $($( (stringify!($module), stringify!($test)), )*)* ]
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    const BEHAVIOURS: &[(&str, &str)] = __behaviours!(__behaviour_names!());

    /// Every `pub async fn` of a behaviour module is in the macro's list, so
    /// engine crates run every behaviour (the list's names are checked by the
    /// compiler where the macro expands).
    #[test]
    fn the_macro_lists_every_behaviour() {
        let listed: BTreeSet<(String, String)> = BEHAVIOURS
            .iter()
            .map(|(m, t)| (m.to_string(), t.to_string()))
            .collect();
        assert_eq!(
            listed.len(),
            BEHAVIOURS.len(),
            "a behaviour is listed twice"
        );
        let modules: BTreeSet<&str> = BEHAVIOURS.iter().map(|(m, _)| *m).collect();
        let mut defined = BTreeSet::new();
        for module in modules {
            let path = format!("{}/src/{module}.rs", env!("CARGO_MANIFEST_DIR"));
            let source = std::fs::read_to_string(&path).unwrap();
            for line in source.lines() {
                if let Some(rest) = line.strip_prefix("pub async fn ") {
                    let name = rest.split(['(', '<']).next().unwrap();
                    defined.insert((module.to_string(), name.to_string()));
                }
            }
        }
        assert_eq!(
            defined, listed,
            "conformance_tests! and the modules disagree"
        );
    }
}
