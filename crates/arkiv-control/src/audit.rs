//! The audit log: who did what, append-only and hash-chained.
//!
//! Each entry's hash covers its own fields and the previous entry's hash,
//! so editing an entry breaks its hash and deleting one breaks the link of
//! the next. Sequence numbers are assigned densely, so a deleted entry is
//! also a gap. What a chain alone cannot show is the loss of its newest
//! entries; `arkiv audit verify` prints the head hash so that it can be
//! kept elsewhere (an evidence report carries it) and compared later.

use chrono::{SecondsFormat, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalog::{Catalog, Result};

/// The hash the first entry links to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    /// RFC 3339, UTC.
    pub time: String,
    /// The token's name, `daemon` or `cli`.
    pub actor: String,
    pub action: String,
    pub target: String,
    /// JSON with the request's parameters.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Each field is length-prefixed so that no two different entries hash the
/// same bytes (`"ab","c"` against `"a","bc"`).
pub fn entry_hash(prev: &str, seq: i64, time: &str, actor: &str, action: &str, target: &str, detail: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"arkiv-audit-v1");
    for field in [prev, &seq.to_string(), time, actor, action, target, detail] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Appends an entry, linked to the newest one, in one transaction.
pub fn append(
    catalog: &Catalog,
    actor: &str,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
) -> Result<AuditEntry> {
    let time = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let detail = detail.to_string();
    catalog.with_conn(|conn| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let last: Option<(i64, String)> = tx
            .query_row("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (seq, prev) = match last {
            Some((s, h)) => (s + 1, h),
            None => (1, GENESIS.to_string()),
        };
        let hash = entry_hash(&prev, seq, &time, actor, action, target, &detail);
        tx.execute(
            "INSERT INTO audit_log (seq, time, actor, action, target, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![seq, time, actor, action, target, detail, prev, hash],
        )?;
        tx.commit()?;
        Ok(AuditEntry {
            seq,
            time: time.clone(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail: detail.clone(),
            prev_hash: prev,
            hash,
        })
    })
}

/// Entries after `after_seq`, oldest first, at most `limit`.
pub fn entries(catalog: &Catalog, after_seq: i64, limit: usize) -> Result<Vec<AuditEntry>> {
    catalog.with_conn(|conn| {
        let mut stmt = conn.prepare(
            "SELECT seq, time, actor, action, target, detail, prev_hash, hash FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
            Ok(AuditEntry {
                seq: r.get(0)?,
                time: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                detail: r.get(5)?,
                prev_hash: r.get(6)?,
                hash: r.get(7)?,
            })
        })?;
        rows.collect()
    })
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    pub entries: u64,
    /// The newest entry's hash (GENESIS for an empty log).
    pub head: String,
    /// The first break found, naming the entry.
    pub problem: Option<String>,
}

/// Walks the whole chain in pages, recomputing every hash.
pub fn verify(catalog: &Catalog) -> Result<Verification> {
    let mut prev_hash = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut count = 0;
    let mut after = 0;
    loop {
        let page = entries(catalog, after, 1000)?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            let problem = if e.seq != expected_seq {
                Some(format!(
                    "entry {} is missing (deleted): the log goes from {} to {}",
                    expected_seq,
                    expected_seq - 1,
                    e.seq
                ))
            } else if e.prev_hash != prev_hash {
                Some(format!("entry {} does not link to entry {}: an entry before it was replaced", e.seq, e.seq - 1))
            } else if entry_hash(&e.prev_hash, e.seq, &e.time, &e.actor, &e.action, &e.target, &e.detail) != e.hash {
                Some(format!(
                    "entry {} ({} {} at {}) was edited: its hash does not match its content",
                    e.seq, e.action, e.target, e.time
                ))
            } else {
                None
            };
            if problem.is_some() {
                return Ok(Verification { entries: count, head: prev_hash, problem });
            }
            prev_hash = e.hash.clone();
            expected_seq += 1;
            count += 1;
            after = e.seq;
        }
    }
    Ok(Verification { entries: count, head: prev_hash, problem: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        (dir, c)
    }

    #[test]
    fn an_intact_chain_verifies_and_its_head_moves() {
        let (_d, c) = catalog();
        assert_eq!(verify(&c).unwrap(), Verification { entries: 0, head: GENESIS.into(), problem: None });
        for i in 0..5 {
            append(&c, "alice", "job.trigger", &format!("backup:{i}"), &json!({"i": i})).unwrap();
        }
        let v = verify(&c).unwrap();
        assert_eq!((v.entries, v.problem), (5, None));
        assert_eq!(v.head, entries(&c, 4, 1).unwrap()[0].hash);
    }

    #[test]
    fn an_edited_entry_is_named() {
        let (_d, c) = catalog();
        for i in 0..4 {
            append(&c, "alice", "job.trigger", "backup:shop", &json!({ "i": i })).unwrap();
        }
        c.with_conn(|conn| conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3", [])).unwrap();
        let v = verify(&c).unwrap();
        assert!(v.problem.as_deref().unwrap().starts_with("entry 3 (job.trigger backup:shop"), "{v:?}");
        assert_eq!(v.entries, 2);
    }

    #[test]
    fn a_deleted_entry_is_named() {
        let (_d, c) = catalog();
        for i in 0..4 {
            append(&c, "alice", "token.create", "ci", &json!({ "i": i })).unwrap();
        }
        c.with_conn(|conn| conn.execute("DELETE FROM audit_log WHERE seq = 2", [])).unwrap();
        let v = verify(&c).unwrap();
        assert_eq!(v.problem.as_deref(), Some("entry 2 is missing (deleted): the log goes from 1 to 3"));
    }

    #[test]
    fn a_rewritten_suffix_is_found_by_its_link() {
        let (_d, c) = catalog();
        for i in 0..3 {
            append(&c, "alice", "job.cancel", "7", &json!({ "i": i })).unwrap();
        }
        // Recompute entry 2's hash consistently after editing it: entry 3 no
        // longer links to it.
        c.with_conn(|conn| {
            let e: (String, String) =
                conn.query_row("SELECT prev_hash, time FROM audit_log WHERE seq = 2", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let h = entry_hash(&e.0, 2, &e.1, "mallory", "job.cancel", "7", "{\"i\":1}");
            conn.execute("UPDATE audit_log SET actor = 'mallory', hash = ?1 WHERE seq = 2", [h])
        })
        .unwrap();
        let v = verify(&c).unwrap();
        assert_eq!(v.problem.as_deref(), Some("entry 3 does not link to entry 2: an entry before it was replaced"));
    }
}
