//! What `ctl` prints: aligned tables for lists, pretty JSON for single documents.

use crate::feed::{Change, ChangeBody, MigrationDoc, RealmDoc, ShardDoc, TenantDoc};
use crate::tenant::{PlacementState, Region};

/// Rows under `headers`, columns padded to their widest cell (the last column unpadded).
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The fleet of one TCS: a line for the region and head, then
/// `EDGE REGION VERSION APPLIED LAG_SEQS LAG_SECONDS LAST_HEARD HOSTS`, the laggards first (as
/// TCS sorts them).
pub(super) fn fleet(fleet: &crate::feed::Fleet) -> String {
    let rows: Vec<Vec<String>> = fleet
        .edges
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                e.report.region.clone(),
                e.report.version.clone(),
                e.report.applied_seq.to_string(),
                e.lag_seqs.to_string(),
                format!("{:.1}", e.lag_seconds),
                format!("{:.1}s ago", e.last_heard_seconds),
                e.report.cache_entries.to_string(),
            ]
        })
        .collect();
    let head = format!(
        "tcs {} at seq {}, {} edge(s)\n",
        fleet.region,
        fleet.head,
        fleet.edges.len()
    );
    head + &table(
        &[
            "EDGE",
            "REGION",
            "VERSION",
            "APPLIED",
            "LAG_SEQS",
            "LAG_SECONDS",
            "LAST_HEARD",
            "HOSTS",
        ],
        &rows,
    )
}

/// `ID VERSION REALM HOSTS PLACEMENTS`, placements as `jira=jira-us-east-1`.
pub(super) fn tenants(docs: &[TenantDoc]) -> String {
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|t| {
            let hosts: Vec<&str> = t.hosts.iter().map(|h| h.as_str()).collect();
            let placements: Vec<String> = t
                .placements
                .iter()
                .map(|(product, p)| match p.state {
                    PlacementState::Active => format!("{product}={}", p.shard),
                    PlacementState::Frozen => format!("{product}={}(frozen)", p.shard),
                })
                .collect();
            vec![
                t.id.to_string(),
                t.version.to_string(),
                t.realm.to_string(),
                hosts.join(","),
                placements.join(","),
            ]
        })
        .collect();
    table(&["ID", "VERSION", "REALM", "HOSTS", "PLACEMENTS"], &rows)
}

/// `ID PRODUCT REGIONS`.
pub(super) fn shards(docs: &[ShardDoc]) -> String {
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|s| vec![s.id.to_string(), s.product.to_string(), joined(&s.regions)])
        .collect();
    table(&["ID", "PRODUCT", "REGIONS"], &rows)
}

/// `NAME REGIONS`.
pub(super) fn realms(docs: &[RealmDoc]) -> String {
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|r| vec![r.name.to_string(), joined(&r.regions)])
        .collect();
    table(&["NAME", "REGIONS"], &rows)
}

/// `SEQ KIND ID VERSION OP`; a migration's op is the phase it entered.
pub(super) fn changes(changes: &[Change]) -> String {
    let rows: Vec<Vec<String>> = changes.iter().map(change_row).collect();
    table(&["SEQ", "KIND", "ID", "VERSION", "OP"], &rows)
}

fn change_row(c: &Change) -> Vec<String> {
    let put_or_delete = |deleted: bool| if deleted { "delete" } else { "put" };
    let (kind, id, version, op) = match &c.body {
        ChangeBody::Tenant { id, version, doc } => (
            "tenant",
            id.to_string(),
            version.to_string(),
            put_or_delete(doc.is_none()),
        ),
        ChangeBody::Shard { id, doc } => (
            "shard",
            id.to_string(),
            "-".to_owned(),
            put_or_delete(doc.is_none()),
        ),
        ChangeBody::Realm { name, doc } => (
            "realm",
            name.to_string(),
            "-".to_owned(),
            put_or_delete(doc.is_none()),
        ),
        ChangeBody::Migration { id, doc } => (
            "migration",
            id.clone(),
            doc.version.to_string(),
            doc.phase.as_str(),
        ),
    };
    vec![c.seq.to_string(), kind.to_owned(), id, version, op.to_owned()]
}

/// `ID TENANT PRODUCT FROM TO PHASE VERSION ADD REMOVE`, regions comma-separated (`-` if none).
pub(super) fn migrations(docs: &[MigrationDoc]) -> String {
    let regions = |r: &[Region]| if r.is_empty() { "-".to_owned() } else { joined(r) };
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.tenant.to_string(),
                m.product.to_string(),
                m.from.to_string(),
                m.to.to_string(),
                m.phase.to_string(),
                m.version.to_string(),
                regions(&m.regions_to_add),
                regions(&m.regions_to_remove),
            ]
        })
        .collect();
    table(
        &[
            "ID", "TENANT", "PRODUCT", "FROM", "TO", "PHASE", "VERSION", "ADD", "REMOVE",
        ],
        &rows,
    )
}

fn joined<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["acme".to_owned(), "12".to_owned(), "x".to_owned()],
            vec!["a".to_owned(), "3".to_owned(), "yy".to_owned()],
        ];
        assert_eq!(
            table(&["ID", "VERSION", "Z"], &rows),
            "ID    VERSION  Z\nacme  12       x\na     3        yy\n"
        );
    }

    #[test]
    fn tenant_rows_show_hosts_and_placements() {
        let doc: TenantDoc = serde_json::from_str(
            r#"{"id":"acme","hosts":["acme.example.test","www.acme.test"],"realm":"us","version":2,
               "placements":{"jira":{"shard":"jira-us-east-1"},
                             "confluence":{"shard":"confluence-us-east-1","state":"frozen"}}}"#,
        )
        .unwrap();
        let out = tenants(&[doc]);
        let line = out.lines().nth(1).unwrap();
        assert!(
            line.starts_with("acme  2        us     acme.example.test,www.acme.test  "),
            "{line}"
        );
        assert!(
            line.ends_with("confluence=confluence-us-east-1(frozen),jira=jira-us-east-1"),
            "{line}"
        );
    }
}
