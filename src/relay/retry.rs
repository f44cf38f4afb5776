//! When to try a failed delivery again: the configured schedule, ±20% jitter, and the
//! receiver's `Retry-After` on 429/503 clamped between the step and twice the step.

use std::time::Duration;

use rand::Rng;

/// The delay before the next attempt after `failures` failed attempts (counting the one
/// that just failed), or `None` when the schedule is exhausted and the delivery is dead.
pub fn next_delay(
    schedule: &[Duration],
    failures: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Option<Duration> {
    let step = *schedule.get((failures as usize).checked_sub(1)?)?;
    if let Some(asked) = retry_after {
        return Some(asked.clamp(step, step * 2));
    }
    let jitter = rng.random_range(0.8..=1.2);
    Some(step.mul_f64(jitter))
}

/// Reads `Retry-After` as delay-seconds (the form rate limiters use); an HTTP date or
/// garbage is ignored.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<Duration> {
        vec![Duration::from_secs(5), Duration::from_secs(30)]
    }

    #[test]
    fn follows_the_schedule_with_jitter_then_gives_up() {
        let mut rng = rand::rng();
        for _ in 0..200 {
            let d = next_delay(&schedule(), 1, None, &mut rng).unwrap();
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
                "{d:?}"
            );
            let d = next_delay(&schedule(), 2, None, &mut rng).unwrap();
            assert!(
                d >= Duration::from_secs(24) && d <= Duration::from_secs(36),
                "{d:?}"
            );
        }
        assert_eq!(next_delay(&schedule(), 3, None, &mut rng), None);
        assert_eq!(next_delay(&[], 1, None, &mut rng), None);
        assert_eq!(next_delay(&schedule(), 0, None, &mut rng), None);
    }

    #[test]
    fn retry_after_is_clamped_to_the_step() {
        let mut rng = rand::rng();
        let s = schedule();
        let at = |secs| next_delay(&s, 1, Some(Duration::from_secs(secs)), &mut rand::rng());
        assert_eq!(at(1), Some(Duration::from_secs(5)));
        assert_eq!(at(7), Some(Duration::from_secs(7)));
        assert_eq!(at(3600), Some(Duration::from_secs(10)));
        assert_eq!(
            next_delay(&s, 3, Some(Duration::from_secs(7)), &mut rng),
            None
        );
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
