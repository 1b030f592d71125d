//! The retention policy behind `arkiv forget`: which snapshots of each group
//! survive. It is pure logic over snapshot metadata so that a dry run can show
//! exactly what a real run would delete, and so that it can be tested without
//! a repository.
//!
//! The rules and their interplay follow restic's `forget` policy, so anyone
//! who knows restic's flags gets the same answer from Arkiv, with one
//! deliberate difference: calendar buckets (hour, day, week, month, year) are
//! taken in UTC, where restic uses the machine's local time zone. Snapshot
//! times are stored in UTC, and deciding what to delete must not depend on the
//! zone of whichever machine happens to run `forget`.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::snapshot::{Snapshot, SnapshotEntry};

/// What to keep. Each rule is applied to every group on its own and a
/// snapshot survives if any rule keeps it, so adding a rule can only keep
/// more. `None` means the rule is not used; a count of 0 keeps nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeepPolicy {
    /// The newest n snapshots, whatever their times.
    pub last: Option<u32>,
    /// For the newest n hours (days, weeks, months, years) that have a
    /// snapshot, the newest snapshot of that period. While a count is left
    /// over, the group's oldest snapshot is kept too (as restic does), so
    /// that a young group keeps its longest history.
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    /// Weeks are ISO weeks (Monday to Sunday), numbered within ISO years.
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    /// Everything no older than this before the group's newest snapshot.
    /// Measured from the newest snapshot rather than from now so that a host
    /// which stopped backing up does not lose its last snapshots merely
    /// because time passed.
    pub within: Option<Duration>,
    /// Every snapshot carrying any of these tags, however old: the way to
    /// exempt particular snapshots from the schedule.
    pub tags: Vec<String>,
}

impl KeepPolicy {
    /// True when no rule could keep anything. Applying such a policy would
    /// delete every snapshot, which is almost certainly a mistake, so
    /// `forget` must refuse it. A lone count of 0 counts as empty for the
    /// same reason (restic, too, treats 0 as "not set").
    pub fn is_empty(&self) -> bool {
        let counts = [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly];
        counts.iter().all(|c| c.unwrap_or(0) == 0) && self.within.is_none() && self.tags.is_empty()
    }
}

/// Parses a `--keep-within` duration the way restic does: numbers each
/// followed by a unit, e.g. "30d", "12h", "1y2m3d4h". Units are y (365 days),
/// m (30 days; months, not minutes), w (7 days), d, h and s (seconds: short
/// prune grace periods, for tests). Fixed-length years
/// and months keep the cut-off a plain subtraction, independent of calendars.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = |why: String| format!("invalid duration '{s}': {why} (expected e.g. 30d, 12h or 1y2m3d4h)");
    if s.is_empty() {
        return Err(err("it is empty".into()));
    }
    let mut total = Duration::zero();
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.is_empty() {
            return Err(err(format!("'{c}' has no number before it")));
        }
        const UNITS: [(char, i64); 6] =
            [('y', 365 * 86_400), ('m', 30 * 86_400), ('w', 7 * 86_400), ('d', 86_400), ('h', 3600), ('s', 1)];
        let Some(&(_, unit)) = UNITS.iter().find(|(u, _)| *u == c) else {
            return Err(err(format!("unknown unit '{c}' (units are y, m, w, d, h, s)")));
        };
        let n: i64 = digits.parse().map_err(|_| err(format!("{digits} is too large")))?;
        total = n
            .checked_mul(unit)
            .and_then(Duration::try_seconds)
            .and_then(|p| total.checked_add(&p))
            .ok_or_else(|| err("it is too long".into()))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(err(format!("{digits} has no unit")));
    }
    Ok(total)
}

/// Shows a duration in `parse_duration`'s units (plus seconds, which only a
/// hand-made policy can have), for reasons.
fn format_duration(d: Duration) -> String {
    let secs = d.num_seconds().unsigned_abs();
    let parts = [(secs / 86_400, "d"), (secs % 86_400 / 3600, "h"), (secs % 3600, "s")];
    let out: String = parts.iter().filter(|(n, _)| *n > 0).map(|(n, unit)| format!("{n}{unit}")).collect();
    match (out.is_empty(), d < Duration::zero()) {
        (true, _) => "0h".to_string(),
        (false, negative) => format!("{}{out}", if negative { "-" } else { "" }),
    }
}

/// Which snapshot fields split snapshots into groups that are judged
/// separately. Grouping keeps one busy host or source from pushing another's
/// snapshots out of the counts. It is a set of fields, hence a struct of flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub source: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    /// "host,source,paths": each backup job on each machine is its own group.
    fn default() -> Self {
        GroupBy { host: true, source: true, paths: true, tags: false }
    }
}

impl GroupBy {
    /// No grouping: the policy sees every snapshot as one list.
    pub const NONE: GroupBy = GroupBy { host: false, source: false, paths: false, tags: false };

    /// Parses a comma-separated list of host, source, paths and tags, as the
    /// `--group-by` flag takes it; "" means no grouping.
    pub fn parse(s: &str) -> Result<GroupBy, String> {
        let mut g = GroupBy::NONE;
        if s.trim().is_empty() {
            return Ok(g);
        }
        for field in s.split(',') {
            match field.trim() {
                "host" => g.host = true,
                "source" => g.source = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                other => return Err(format!("unknown group-by field '{other}': use host, source, paths, tags")),
            }
        }
        Ok(g)
    }

    fn key(&self, s: &Snapshot) -> GroupKey {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        GroupKey {
            host: self.host.then(|| s.host.clone()),
            source: self.source.then(|| s.source.clone()),
            // Sorted so that listing the same paths or tags in another order
            // does not start a new group.
            paths: self.paths.then(|| sorted(&s.paths)),
            tags: self.tags.then(|| sorted(&s.tags)),
        }
    }
}

/// The values a group shares; a field not grouped by is `None`, so output
/// can tell "not grouped by host" from "host is empty".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct GroupKey {
    pub host: Option<String>,
    pub source: Option<String>,
    pub paths: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
}

/// The verdict on one snapshot, with every rule that kept it so that users
/// can see why a snapshot they expected gone is still there.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: Id,
    pub time: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub key: GroupKey,
    /// Newest first, the order in which the rules consume their counts.
    pub decisions: Vec<Decision>,
}

/// Decides every snapshot: each appears in exactly one group, and groups come
/// sorted by key so that output and tests are deterministic. An empty policy
/// keeps everything (as in restic); refusing it is the caller's job.
pub fn apply(snapshots: &[SnapshotEntry], policy: &KeepPolicy, group_by: GroupBy) -> Vec<Group> {
    let mut groups: BTreeMap<GroupKey, Vec<&SnapshotEntry>> = BTreeMap::new();
    for e in snapshots {
        groups.entry(group_by.key(&e.snapshot)).or_default().push(e);
    }
    groups
        .into_iter()
        .map(|(key, mut list)| {
            // Ties broken by id so that the result never depends on listing order.
            list.sort_by(|a, b| b.snapshot.time.cmp(&a.snapshot.time).then(a.id.cmp(&b.id)));
            Group { key, decisions: decide(&list, policy) }
        })
        .collect()
}

/// A counted rule: keeps a snapshot whose bucket differs from that of the
/// last snapshot it kept, until its count runs out.
struct Rule {
    left: u32,
    last: Option<i64>,
    reason: &'static str,
    bucket: fn(DateTime<Utc>, usize) -> i64,
}

fn decide(list: &[&SnapshotEntry], policy: &KeepPolicy) -> Vec<Decision> {
    let verdict =
        |e: &SnapshotEntry, reasons: Vec<String>| Decision { id: e.id, time: e.snapshot.time, keep: true, reasons };
    if policy.is_empty() {
        return list.iter().map(|e| verdict(e, vec!["policy is empty".into()])).collect();
    }
    let rule = |count: Option<u32>, reason, bucket| Rule { left: count.unwrap_or(0), last: None, reason, bucket };
    let mut rules = [
        rule(policy.last, "last snapshot", |_, nr| nr as i64),
        rule(policy.hourly, "hourly snapshot", |t, _| {
            (t.year() as i64 * 10_000 + t.month() as i64 * 100 + t.day() as i64) * 100 + t.hour() as i64
        }),
        rule(policy.daily, "daily snapshot", |t, _| t.year() as i64 * 10_000 + t.month() as i64 * 100 + t.day() as i64),
        rule(policy.weekly, "weekly snapshot", |t, _| t.iso_week().year() as i64 * 100 + t.iso_week().week() as i64),
        rule(policy.monthly, "monthly snapshot", |t, _| t.year() as i64 * 100 + t.month() as i64),
        rule(policy.yearly, "yearly snapshot", |t, _| t.year() as i64),
    ];
    let newest = list.first().map(|e| e.snapshot.time);
    list.iter()
        .enumerate()
        .map(|(nr, e)| {
            let t = e.snapshot.time;
            let mut reasons = Vec::new();
            reasons.extend(policy.tags.iter().filter(|&tag| e.snapshot.tags.contains(tag)).map(|t| format!("tag {t}")));
            if let (Some(w), Some(newest)) = (policy.within, newest) {
                // A cut-off beyond the representable range means "everything"
                // for a positive duration and "nothing" for a negative one.
                let within = newest.checked_sub_signed(w).map_or(w > Duration::zero(), |cut| t >= cut);
                if within {
                    reasons.push(format!("within {}", format_duration(w)));
                }
            }
            let oldest = nr + 1 == list.len();
            for r in rules.iter_mut().filter(|r| r.left > 0) {
                let b = (r.bucket)(t, nr);
                if r.last != Some(b) || oldest {
                    r.last = Some(b);
                    r.left -= 1;
                    reasons.push(r.reason.to_string());
                }
            }
            if reasons.is_empty() {
                Decision { keep: false, ..verdict(e, vec!["matched no keep rule".into()]) }
            } else {
                verdict(e, reasons)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(n: u64, time: DateTime<Utc>, host: &str, tags: &[&str]) -> SnapshotEntry {
        let mut snapshot = Snapshot::new("files", Id::default());
        snapshot.time = time;
        snapshot.host = host.to_string();
        snapshot.tags = tags.iter().map(|t| t.to_string()).collect();
        snapshot.paths = vec!["/data".to_string()];
        SnapshotEntry { id: Id::of_stored(&n.to_le_bytes()), snapshot }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Snapshots of host "h" at the given times, all in one group.
    fn series(times: &[&str]) -> Vec<SnapshotEntry> {
        times.iter().enumerate().map(|(i, t)| entry(i as u64, at(t), "h", &[])).collect()
    }

    fn judge(snaps: &[SnapshotEntry], policy: KeepPolicy) -> Vec<Decision> {
        let groups = apply(snaps, &policy, GroupBy::NONE);
        assert_eq!(groups.len(), 1);
        groups.into_iter().next().unwrap().decisions
    }

    fn keeps(d: &[Decision]) -> Vec<bool> {
        d.iter().map(|d| d.keep).collect()
    }

    fn reasons(d: &Decision) -> Vec<&str> {
        d.reasons.iter().map(String::as_str).collect()
    }

    #[test]
    fn year_of_dailies_keeps_7_daily_4_weekly_12_monthly_1_yearly() {
        // 2023-01-01 .. 2023-12-31; 31 Dec 2023 is a Sunday, ending ISO week 52.
        let snaps: Vec<_> =
            (0..365).map(|d| entry(d, at("2023-01-01T03:00:00Z") + Duration::days(d as i64), "h", &[])).collect();
        let policy =
            KeepPolicy { daily: Some(7), weekly: Some(4), monthly: Some(12), yearly: Some(1), ..Default::default() };
        let decisions = judge(&snaps, policy);

        let mut expected: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for day in 25..=31 {
            expected.entry(format!("12-{day}")).or_default().push("daily snapshot");
        }
        for day in ["12-31", "12-24", "12-17", "12-10"] {
            expected.entry(day.to_string()).or_default().push("weekly snapshot");
        }
        for (month, last_day) in [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31].iter().enumerate() {
            expected.entry(format!("{:02}-{last_day}", month + 1)).or_default().push("monthly snapshot");
        }
        expected.get_mut("12-31").unwrap().push("yearly snapshot");

        let kept: BTreeMap<String, Vec<&str>> =
            decisions.iter().filter(|d| d.keep).map(|d| (d.time.format("%m-%d").to_string(), reasons(d))).collect();
        assert_eq!(kept.len(), 7 + 3 + 11);
        assert_eq!(kept, expected);
        assert!(decisions.iter().filter(|d| !d.keep).all(|d| reasons(d) == ["matched no keep rule"]));
    }

    #[test]
    fn one_snapshot_kept_by_several_rules_lists_every_reason() {
        let snaps = series(&["2024-03-01T10:00:00Z", "2024-03-02T09:00:00Z", "2024-03-02T10:00:00Z"]);
        let d = judge(&snaps, KeepPolicy { last: Some(1), daily: Some(2), ..Default::default() });
        assert_eq!(reasons(&d[0]), ["last snapshot", "daily snapshot"]);
        assert!(!d[1].keep, "same day as a newer daily snapshot");
        assert_eq!(reasons(&d[2]), ["daily snapshot"]);
    }

    #[test]
    fn oldest_is_kept_while_a_count_is_left_and_zero_keeps_nothing() {
        let snaps = series(&["2024-03-02T10:00:00Z", "2024-03-02T11:00:00Z", "2024-03-02T12:00:00Z"]);
        let d = judge(&snaps, KeepPolicy { last: Some(0), daily: Some(3), ..Default::default() });
        assert_eq!(keeps(&d), [true, false, true]);
        assert_eq!(reasons(&d[2]), ["daily snapshot"]);
    }

    #[test]
    fn within_counts_back_from_the_newest_snapshot() {
        let snaps =
            series(&["2020-06-10T00:00:00Z", "2020-06-01T00:00:00Z", "2020-05-31T00:00:00Z", "2020-05-30T23:59:59Z"]);
        let d = judge(&snaps, KeepPolicy { within: Some(parse_duration("10d").unwrap()), ..Default::default() });
        assert_eq!(keeps(&d), [true, true, true, false]);
        assert_eq!(reasons(&d[2]), ["within 10d"]);
    }

    #[test]
    fn keep_tag_keeps_any_snapshot_with_a_listed_tag() {
        let mut snaps =
            series(&["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z", "2024-01-04T00:00:00Z"]);
        for (s, tags) in snaps.iter_mut().zip([&["prod"][..], &["dev"], &["prod", "x"], &[]]) {
            s.snapshot.tags = tags.iter().map(|t| t.to_string()).collect();
        }
        let d = judge(&snaps, KeepPolicy { tags: vec!["prod".into(), "x".into()], ..Default::default() });
        assert_eq!(keeps(&d), [false, true, false, true]);
        assert_eq!(reasons(&d[1]), ["tag prod", "tag x"]);
        assert_eq!(reasons(&d[3]), ["tag prod"]);
    }

    #[test]
    fn grouping_by_host_judges_each_host_separately() {
        let mut snaps =
            series(&["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z", "2024-01-04T00:00:00Z"]);
        for (s, host) in snaps.iter_mut().zip(["beta", "alpha", "alpha", "beta"]) {
            s.snapshot.host = host.to_string();
        }
        // The order paths are listed in must not split a group.
        snaps[0].snapshot.paths = vec!["/b".into(), "/a".into()];
        snaps[3].snapshot.paths = vec!["/a".into(), "/b".into()];
        let policy = KeepPolicy { last: Some(1), ..Default::default() };
        for by in [GroupBy::parse("host").unwrap(), GroupBy::default()] {
            let groups = apply(&snaps, &policy, by);
            let hosts: Vec<_> = groups.iter().map(|g| g.key.host.as_deref()).collect();
            assert_eq!(hosts, [Some("alpha"), Some("beta")], "{by:?}");
            let kept: Vec<Id> = groups.iter().flat_map(|g| &g.decisions).filter(|d| d.keep).map(|d| d.id).collect();
            assert_eq!(kept, [snaps[2].id, snaps[3].id]);
            assert_eq!(groups[0].key.paths.is_some(), by.paths, "only grouped fields are in the key");
        }
        assert_eq!(judge(&snaps, policy).iter().filter(|d| d.keep).count(), 1);
    }

    #[test]
    fn empty_policy_is_detected_and_keeps_everything() {
        assert!(KeepPolicy::default().is_empty());
        assert!(KeepPolicy { last: Some(0), yearly: Some(0), ..Default::default() }.is_empty());
        assert!(!KeepPolicy { tags: vec!["a".into()], ..Default::default() }.is_empty());
        assert!(!KeepPolicy { within: Some(Duration::zero()), ..Default::default() }.is_empty());
        assert!(!KeepPolicy { monthly: Some(1), ..Default::default() }.is_empty());
        let d = judge(&series(&["2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"]), KeepPolicy::default());
        assert!(d.iter().all(|d| d.keep && d.reasons == ["policy is empty"]));
    }

    #[test]
    fn parse_duration_reads_restic_units_and_rejects_the_rest() {
        let days = |n| Duration::days(n);
        assert_eq!(parse_duration("30d"), Ok(days(30)));
        assert_eq!(parse_duration("12h"), Ok(Duration::hours(12)));
        assert_eq!(parse_duration("2w"), Ok(days(14)));
        assert_eq!(parse_duration("1y2m3d4h"), Ok(days(365 + 60 + 3) + Duration::hours(4)));
        assert_eq!(parse_duration("0d"), Ok(Duration::zero()));
        for bad in ["", "d", "30", "3x", "1.5d", "-1d", "1d ", "99999999999999999999d", "9223372036854775807y"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(format_duration(parse_duration("1d12h").unwrap()), "1d12h");
        assert_eq!(format_duration(Duration::zero()), "0h");
    }

    #[test]
    fn group_by_parses_field_lists_and_rejects_unknown_fields() {
        assert_eq!(GroupBy::parse("host,source,paths"), Ok(GroupBy::default()));
        assert_eq!(GroupBy::parse(""), Ok(GroupBy::NONE));
        assert_eq!(GroupBy::parse(" host , tags"), Ok(GroupBy { host: true, source: false, paths: false, tags: true }));
        for bad in ["hosts", "host,,paths", "host;paths", "tag"] {
            assert!(GroupBy::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    fn arb_snapshots() -> impl Strategy<Value = Vec<SnapshotEntry>> {
        prop::collection::vec((0usize..3, 0i64..200_000_000, any::<bool>()), 0..40).prop_map(|raw| {
            let hosts = ["a", "b", "c"];
            raw.iter()
                .enumerate()
                .map(|(i, &(h, secs, tagged))| {
                    let tags: &[&str] = if tagged { &["t"] } else { &[] };
                    entry(i as u64, at("2015-01-01T00:00:00Z") + Duration::seconds(secs), hosts[h], tags)
                })
                .collect()
        })
    }

    fn arb_group_by() -> impl Strategy<Value = GroupBy> {
        prop::sample::select(vec!["", "host", "tags", "host,tags", "host,source,paths"])
            .prop_map(|s| GroupBy::parse(s).unwrap())
    }

    proptest! {
        #[test]
        fn every_snapshot_is_decided_once_and_last_n_keeps_min_n_size(
            snaps in arb_snapshots(),
            by in arb_group_by(),
            n in 1u32..8,
            counts in prop::collection::vec(prop::option::of(0u32..5), 5),
            within_h in prop::option::of(0i64..5000),
        ) {
            let last_only = KeepPolicy { last: Some(n), ..Default::default() };
            for g in apply(&snaps, &last_only, by) {
                let kept: Vec<bool> = g.decisions.iter().map(|d| d.keep).collect();
                let want = (n as usize).min(kept.len());
                prop_assert!(kept[..want].iter().all(|k| *k) && !kept[want..].iter().any(|k| *k));
            }

            let policy = KeepPolicy {
                last: Some(n), hourly: counts[0], daily: counts[1], weekly: counts[2], monthly: counts[3],
                yearly: counts[4], within: within_h.map(Duration::hours), tags: vec!["t".into()],
            };
            let groups = apply(&snaps, &policy, by);
            prop_assert!(groups.windows(2).all(|w| w[0].key < w[1].key));
            let mut seen = Vec::new();
            for g in &groups {
                prop_assert!(!g.decisions.is_empty());
                prop_assert!(g.decisions.windows(2).all(|w| w[0].time >= w[1].time));
                for d in &g.decisions {
                    seen.push(d.id);
                    prop_assert_eq!(d.keep, d.reasons != ["matched no keep rule"]);
                }
            }
            let mut all: Vec<Id> = snaps.iter().map(|s| s.id).collect();
            all.sort();
            seen.sort();
            prop_assert_eq!(seen, all);
        }
    }
}
