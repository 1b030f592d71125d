//! When a job is due: cron expressions in a time zone or fixed intervals,
//! a window of the day outside which nothing starts, and jitter.
//!
//! Everything here is a pure function of the time it is given, so the
//! scheduler's tests move a [`ManualClock`] instead of waiting.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::config::ScheduleConfig;

/// The daemon's notion of now. Production uses [`SystemClock`]; tests use
/// [`ManualClock`] and advance it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock(Mutex::new(at))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += chrono::Duration::from_std(by).unwrap_or_default();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Clone)]
enum Timing {
    Cron(Box<Cron>),
    Every(chrono::Duration),
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    timing: Timing,
    tz: Tz,
    window: Option<(NaiveTime, NaiveTime)>,
    pub jitter: Duration,
    pub catch_up: bool,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub priority: i32,
}

/// Parses an IANA time zone name, with the error saying what was wrong.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone '{name}' (use an IANA name such as UTC or Europe/Berlin)"))
}

fn parse_time_of_day(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("'{s}' is not a time of day (HH:MM)"))
}

impl Schedule {
    /// Checks a schedule from the configuration; `default_tz` is the
    /// daemon's. Errors say what is wrong without the key, which the caller
    /// adds.
    pub fn from_config(c: &ScheduleConfig, default_tz: &str) -> Result<Schedule, String> {
        let tz = parse_tz(c.timezone.as_deref().unwrap_or(default_tz))?;
        let timing = match (&c.cron, c.every) {
            (Some(expr), None) => {
                let cron: Cron = expr.parse().map_err(|e| format!("cron expression '{expr}' is invalid: {e}"))?;
                // croner accepts patterns that never match (30 February):
                // such a schedule would silently never run.
                cron.find_next_occurrence(&Utc::now().with_timezone(&tz), false)
                    .map_err(|e| format!("cron expression '{expr}' never matches: {e}"))?;
                Timing::Cron(Box::new(cron))
            }
            (None, Some(every)) => {
                if every < Duration::from_secs(1) {
                    return Err("every must be at least 1s".into());
                }
                Timing::Every(chrono::Duration::from_std(every).map_err(|_| "every is too long".to_string())?)
            }
            (Some(_), Some(_)) => return Err("give cron or every, not both".into()),
            (None, None) => return Err("needs cron (e.g. \"0 2 * * *\") or every (e.g. \"4h\")".into()),
        };
        let window = match (&c.not_before, &c.not_after) {
            (None, None) => None,
            (b, a) => Some((
                b.as_deref().map(parse_time_of_day).transpose()?.unwrap_or(NaiveTime::MIN),
                a.as_deref()
                    .map(parse_time_of_day)
                    .transpose()?
                    .unwrap_or_else(|| NaiveTime::from_hms_opt(23, 59, 59).expect("valid time")),
            )),
        };
        if let Some((b, a)) = window {
            if b == a {
                return Err("not_before and not_after are the same time: the window is empty".into());
            }
        }
        Ok(Schedule {
            timing,
            tz,
            window,
            jitter: c.jitter.unwrap_or_default(),
            catch_up: c.catch_up.unwrap_or(true),
            timeout: c.timeout,
            retries: c.retries.unwrap_or(2),
            retry_backoff: c.retry_backoff.unwrap_or(Duration::from_secs(60)),
            priority: c.priority.unwrap_or(0),
        })
    }

    /// A cron schedule with the defaults, for built-in jobs.
    pub fn cron(expr: &str, default_tz: &str) -> Schedule {
        Schedule::from_config(&ScheduleConfig { cron: Some(expr.into()), ..Default::default() }, default_tz)
            .expect("built-in schedule is valid")
    }

    /// The first occurrence strictly after `after`, before the window is applied.
    fn next_occurrence(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Whole seconds: a daemon started at 10:00:00.331 must still run a
        // minutely job at 10:01:00.000, not carry the fraction forever.
        let after = after.with_nanosecond(0).unwrap_or(after);
        match &self.timing {
            Timing::Cron(cron) => {
                cron.find_next_occurrence(&after.with_timezone(&self.tz), false).ok().map(|t| t.with_timezone(&Utc))
            }
            Timing::Every(step) => Some(after + *step),
        }
    }

    fn in_window(&self, t: DateTime<Utc>) -> bool {
        let Some((from, to)) = self.window else { return true };
        let local = t.with_timezone(&self.tz).time();
        if from < to {
            local >= from && local <= to
        } else {
            // A window across midnight, e.g. 22:00–04:00.
            local >= from || local <= to
        }
    }

    /// The next start at or after `t` that lies in the window: `t` itself,
    /// or the window's next opening.
    pub fn into_window(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let Some((from, _)) = self.window else { return t };
        if self.in_window(t) {
            return t;
        }
        let local = t.with_timezone(&self.tz);
        let mut day = local.date_naive();
        for _ in 0..3 {
            let candidate = day.and_time(from);
            // A time that does not exist on that day (a DST gap) moves to the
            // earliest valid instant after it.
            let resolved = self
                .tz
                .from_local_datetime(&candidate)
                .earliest()
                .or_else(|| self.tz.from_local_datetime(&(candidate + chrono::Duration::hours(1))).earliest());
            if let Some(at) = resolved.map(|d| d.with_timezone(&Utc)) {
                if at > t {
                    return at;
                }
            }
            day = day.succ_opt().unwrap_or(day);
        }
        t
    }

    /// When the job is next due after `after` (the previous due time, or
    /// the daemon's start): the schedule's next occurrence, moved into the
    /// window when it falls outside it.
    pub fn next_due(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_occurrence(after).map(|t| self.into_window(t))
    }

    /// Whether occurrences were missed between `last_due` (when the job was
    /// last due, recorded in the catalog) and `now`: then, with catch-up,
    /// one run is due at once.
    pub fn missed_since(&self, last_due: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.next_occurrence(last_due).is_some_and(|t| t < now)
    }

    /// A random delay in `[0, jitter]`.
    pub fn jitter_delay(&self) -> Duration {
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        let ms = self.jitter.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(rand::random::<u64>() % (ms + 1))
    }

    /// The wait before retry number `attempt` (1 for the first retry):
    /// doubled each time, capped at an hour, with up to 10% jitter so that
    /// jobs failing together do not retry together.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let base = self.retry_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let base = base.min(Duration::from_secs(3600));
        let spread = base.as_millis() as u64 / 10;
        base + Duration::from_millis(if spread == 0 { 0 } else { rand::random::<u64>() % spread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sched(toml_text: &str) -> Result<Schedule, String> {
        let c: ScheduleConfig = toml::from_str(toml_text).unwrap();
        Schedule::from_config(&c, "UTC")
    }

    #[test]
    fn cron_runs_in_its_time_zone() {
        let s = sched("cron = '0 2 * * *'\ntimezone = 'Europe/Berlin'").unwrap();
        // 02:00 in Berlin in winter is 01:00 UTC, in summer 00:00 UTC.
        assert_eq!(s.next_due(at("2026-01-10T12:00:00Z")).unwrap(), at("2026-01-11T01:00:00Z"));
        assert_eq!(s.next_due(at("2026-07-10T12:00:00Z")).unwrap(), at("2026-07-11T00:00:00Z"));
    }

    #[test]
    fn seconds_field_is_accepted() {
        let s = sched("cron = '*/10 * * * * *'").unwrap();
        assert_eq!(s.next_due(at("2026-01-01T00:00:01Z")).unwrap(), at("2026-01-01T00:00:10Z"));
    }

    #[test]
    fn fractions_of_a_second_do_not_carry_into_due_times() {
        let s = sched("cron = '* * * * *'").unwrap();
        assert_eq!(s.next_due(at("2026-01-01T00:00:00.331Z")).unwrap(), at("2026-01-01T00:01:00Z"));
        let s = sched("every = '10s'").unwrap();
        assert_eq!(s.next_due(at("2026-01-01T00:00:00.331Z")).unwrap(), at("2026-01-01T00:00:10Z"));
    }

    #[test]
    fn interval_counts_from_the_previous_due_time() {
        let s = sched("every = '4h'").unwrap();
        assert_eq!(s.next_due(at("2026-01-01T00:00:00Z")).unwrap(), at("2026-01-01T04:00:00Z"));
    }

    #[test]
    fn an_occurrence_outside_the_window_waits_for_its_opening() {
        let s = sched("every = '1h'\nnot_before = '02:00'\nnot_after = '04:00'").unwrap();
        assert_eq!(s.next_due(at("2026-01-01T02:30:00Z")).unwrap(), at("2026-01-01T03:30:00Z"));
        assert_eq!(s.next_due(at("2026-01-01T03:30:00Z")).unwrap(), at("2026-01-02T02:00:00Z"));
        // Across midnight.
        let s = sched("every = '1h'\nnot_before = '22:00'\nnot_after = '01:00'").unwrap();
        assert_eq!(s.next_due(at("2026-01-01T23:30:00Z")).unwrap(), at("2026-01-02T00:30:00Z"));
        assert_eq!(s.next_due(at("2026-01-02T00:30:00Z")).unwrap(), at("2026-01-02T22:00:00Z"));
    }

    #[test]
    fn missed_runs_are_seen() {
        let s = sched("cron = '0 * * * *'").unwrap();
        assert!(s.missed_since(at("2026-01-01T00:00:00Z"), at("2026-01-01T03:10:00Z")));
        assert!(!s.missed_since(at("2026-01-01T03:00:00Z"), at("2026-01-01T03:10:00Z")));
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(sched("cron = 'every day'").unwrap_err().contains("is invalid"));
        assert!(sched("cron = '0 0 30 2 *'").unwrap_err().contains("never matches"));
        assert!(sched("cron = '0 * * * *'\nevery = '1h'").unwrap_err().contains("not both"));
        assert!(sched("timezone = 'UTC'").unwrap_err().contains("needs cron"));
        assert!(sched("cron = '0 * * * *'\ntimezone = 'Mars/Base'").unwrap_err().contains("unknown time zone"));
        assert!(sched("every = '1h'\nnot_before = '25:00'").unwrap_err().contains("HH:MM"));
    }

    #[test]
    fn retry_delays_double_and_are_capped() {
        let s = sched("every = '1h'\nretry_backoff = '10s'").unwrap();
        let d1 = s.retry_delay(1);
        let d3 = s.retry_delay(3);
        assert!(d1 >= Duration::from_secs(10) && d1 < Duration::from_secs(11), "{d1:?}");
        assert!(d3 >= Duration::from_secs(40) && d3 < Duration::from_secs(44), "{d3:?}");
        assert!(s.retry_delay(30) <= Duration::from_secs(3960));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(at("2026-01-01T00:00:00Z"));
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now(), at("2026-01-01T00:01:30Z"));
    }
}
