//! Row-level helpers shared by the SQLite operations: JSON columns, registry lookups, the log.

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::catalogue::store::StoreError;
use crate::feed::{Change, ChangeBody, ChangesPage, RealmDoc, ShardDoc};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::storage(e)
    }
}

/// Decodes a JSON column; a document that no longer parses means the file is damaged.
pub(super) fn decode<T: DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(StoreError::storage)
}

/// Encodes a document for a JSON column.
pub(super) fn encode<T: Serialize>(doc: &T) -> Result<String, StoreError> {
    serde_json::to_string(doc).map_err(StoreError::storage)
}

/// `Invalid` carrying `problems`, unless there are none.
pub(super) fn invalid_if(problems: Vec<String>) -> Result<(), StoreError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(problems))
    }
}

/// The realm `name`, if registered.
pub(super) fn realm(conn: &Connection, name: &str) -> Result<Option<RealmDoc>, StoreError> {
    one_doc(conn, "SELECT doc FROM realms WHERE name = ?1", name)
}

/// The shard `id`, if registered.
pub(super) fn shard(conn: &Connection, id: &str) -> Result<Option<ShardDoc>, StoreError> {
    one_doc(conn, "SELECT doc FROM shards WHERE id = ?1", id)
}

/// The document a one-key `sql` selects, if any.
pub(super) fn one_doc<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached(sql)?
        .query_row([key], |r| r.get(0))
        .optional()?;
    json.as_deref().map(decode).transpose()
}

/// Every document `sql` selects (one JSON column, no parameters).
pub(super) fn all_docs<T: DeserializeOwned>(conn: &Connection, sql: &str) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.map(|json| decode(&json?)).collect()
}

/// The values of the first column `sql` selects for `key`, as strings.
pub(super) fn names(conn: &Connection, sql: &str, key: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([key], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest sequence number of the log (0 when empty).
pub(super) fn head(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| r.get(0))?)
}

/// Appends `body` to the log with the next sequence number; call inside the write's transaction.
pub(super) fn append(conn: &Connection, body: &ChangeBody) -> Result<u64, StoreError> {
    let seq = head(conn)? + 1;
    conn.prepare_cached("INSERT INTO changes (seq, body) VALUES (?1, ?2)")?
        .execute(params![seq, encode(body)?])?;
    Ok(seq)
}

/// Up to `limit` changes after `after`, with the head read in the same transaction.
pub(super) fn changes(conn: &Connection, after: u64, limit: usize) -> Result<ChangesPage, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, body FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt.query_map(params![after, limit], |r| {
        Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?))
    })?;
    let changes = rows
        .map(|row| {
            let (seq, json) = row?;
            Ok(Change {
                seq,
                body: decode(&json)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(ChangesPage {
        changes,
        head: head(conn)?,
    })
}
