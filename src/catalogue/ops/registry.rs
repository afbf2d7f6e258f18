//! Shard and realm writes. A change to either must keep every tenant that uses it valid, and
//! neither can be deleted while a tenant uses it.

use super::{invalid_if, Rows};
use crate::catalogue::store::{StoreError, Written};
use crate::catalogue::validate::{realm_problems, shard_problems};
use crate::feed::{ChangeBody, RealmDoc, ShardDoc};
use crate::tenant::{Realm, ShardId};

/// See [`crate::catalogue::Store::put_shard`].
pub(in crate::catalogue) async fn put_shard(
    rows: &impl Rows,
    id: &ShardId,
    doc: ShardDoc,
) -> Result<Written<ShardDoc>, StoreError> {
    let uses = rows.placements_on_shard(id).await?;
    invalid_if(shard_problems(id, &doc, &uses))?;
    let created = rows.shard(id).await?.is_none();
    rows.write_shard(id, &doc).await?;
    rows.append(&ChangeBody::Shard {
        id: id.clone(),
        doc: Some(doc.clone()),
    })
    .await?;
    Ok(Written { doc, created })
}

/// See [`crate::catalogue::Store::delete_shard`].
pub(in crate::catalogue) async fn delete_shard(rows: &impl Rows, id: &ShardId) -> Result<(), StoreError> {
    if rows.shard(id).await?.is_none() {
        return Err(StoreError::NotFound);
    }
    in_use(&format!("shard {id}"), &rows.shard_users(id).await?)?;
    rows.remove_shard(id).await?;
    rows.append(&ChangeBody::Shard {
        id: id.clone(),
        doc: None,
    })
    .await?;
    Ok(())
}

/// See [`crate::catalogue::Store::put_realm`].
pub(in crate::catalogue) async fn put_realm(
    rows: &impl Rows,
    name: &Realm,
    doc: RealmDoc,
) -> Result<Written<RealmDoc>, StoreError> {
    let uses = rows.placements_in_realm(name).await?;
    invalid_if(realm_problems(name, &doc, &uses))?;
    let created = rows.realm(name).await?.is_none();
    rows.write_realm(name, &doc).await?;
    rows.append(&ChangeBody::Realm {
        name: name.clone(),
        doc: Some(doc.clone()),
    })
    .await?;
    Ok(Written { doc, created })
}

/// See [`crate::catalogue::Store::delete_realm`].
pub(in crate::catalogue) async fn delete_realm(rows: &impl Rows, name: &Realm) -> Result<(), StoreError> {
    if rows.realm(name).await?.is_none() {
        return Err(StoreError::NotFound);
    }
    in_use(&format!("realm {name}"), &rows.realm_users(name).await?)?;
    rows.remove_realm(name).await?;
    rows.append(&ChangeBody::Realm {
        name: name.clone(),
        doc: None,
    })
    .await?;
    Ok(())
}

fn in_use(what: &str, users: &[String]) -> Result<(), StoreError> {
    if users.is_empty() {
        Ok(())
    } else {
        Err(StoreError::InUse(format!(
            "{what} is used by tenants {}",
            users.join(", ")
        )))
    }
}
