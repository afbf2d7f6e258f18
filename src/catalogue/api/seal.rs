//! Sealing a tenant's secrets as it is written: plaintext secrets are sealed with the tenant's
//! data key (its current one, or a new one wrapped by the master key), sealed ones must open
//! with that key where they stand, and the document keeps the wrapped key. Nothing here logs a
//! secret; refusals name the product and secret, never a value.

use crate::catalogue::store::{Store, StoreError};
use crate::feed::{Secret, TenantDoc};
use crate::secrets::{secret_context, DataKey, MasterKeys, SecretError, WrappedKey};
use crate::tenant::TenantId;

/// The longest secret accepted, in bytes.
const MAX_SECRET: usize = 4096;

fn invalid(problem: String) -> StoreError {
    StoreError::Invalid(vec![problem])
}

/// Seals `doc`'s plaintext secrets and checks its sealed ones; sets `doc.data_key`. A document
/// without secrets keeps no data key.
pub(super) async fn seal(
    store: &dyn Store,
    master: Option<&MasterKeys>,
    id: &TenantId,
    doc: &mut TenantDoc,
) -> Result<(), StoreError> {
    let has_secrets = doc.products.values().any(|p| !p.secrets.is_empty());
    for (product, p) in &doc.products {
        for (name, secret) in &p.secrets {
            let name_ok = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                return Err(invalid(format!(
                    "products.{product}.secrets: name {name:?} is not 1 to 64 of [a-z0-9_]"
                )));
            }
            if let Secret::Plain(value) = secret {
                if value.is_empty() || value.len() > MAX_SECRET {
                    return Err(invalid(format!(
                        "products.{product}.secrets.{name}: 1 to {MAX_SECRET} bytes"
                    )));
                }
            }
        }
    }
    if !has_secrets {
        doc.data_key = None;
        return Ok(());
    }
    let Some(master) = master else {
        return Err(invalid(
            "this catalogue has no master key: secrets cannot be stored".into(),
        ));
    };
    // The key the document names, else the tenant's current one, else a new one.
    let wrapped = match doc.data_key.take() {
        Some(w) => Some(w),
        None => match store.get_tenant(id).await {
            Ok(current) => current.data_key,
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(e),
        },
    };
    let (key, wrapped) = match wrapped {
        Some(w) => {
            let key = master.unwrap_key(id.as_str(), &w).await.map_err(|e| match e {
                // KMS unreachable: nothing was written, a retry may succeed.
                SecretError::Kms(why) => StoreError::Unavailable(why),
                e => invalid(format!("data_key: {e}")),
            })?;
            // A key wrapped by a previous master key moves to the current one as it passes.
            let w = if w.key_id == master.current().id() {
                w
            } else {
                wrap(master, id, &key).await?
            };
            (key, w)
        }
        None => {
            let key = DataKey::generate().map_err(StoreError::storage)?;
            let w = wrap(master, id, &key).await?;
            (key, w)
        }
    };
    for (product, p) in &mut doc.products {
        for (name, secret) in &mut p.secrets {
            let context = secret_context(id.as_str(), product.as_str(), name);
            match secret {
                Secret::Plain(value) => {
                    let sealed = key
                        .seal(&context, value.as_bytes())
                        .map_err(StoreError::storage)?;
                    *secret = Secret::Sealed(sealed);
                }
                Secret::Sealed(sealed) => {
                    key.open(&context, sealed).map_err(|_| {
                        invalid(format!(
                            "products.{product}.secrets.{name}: sealed, but not with this tenant's data key for this name"
                        ))
                    })?;
                }
            }
        }
    }
    doc.data_key = Some(wrapped);
    Ok(())
}

/// Wraps `key` with the current master key.
async fn wrap(master: &MasterKeys, id: &TenantId, key: &DataKey) -> Result<WrappedKey, StoreError> {
    master
        .current()
        .wrap_key(id.as_str(), key)
        .await
        .map_err(|e| match e {
            SecretError::Kms(why) => StoreError::Unavailable(why),
            e => StoreError::storage(e),
        })
}

/// Over one page of tenants (`limit` of them after `after`), re-wraps every data key not
/// wrapped by the current master key, one tenant write each (compare-and-set on its version, so
/// a concurrent write is never lost; such a tenant is left for the next run), its sealed
/// secrets untouched. Returns (re-wrapped, left, where the next page starts if one may follow).
pub(super) async fn rotate(
    store: &dyn Store,
    master: &MasterKeys,
    after: Option<&TenantId>,
    limit: usize,
) -> Result<(usize, usize, Option<TenantId>), StoreError> {
    let mut done = 0;
    let mut left = 0;
    let page = store.list_tenants_page(after, limit).await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|d| d.id.clone()))
        .flatten();
    for mut doc in page {
        let Some(w) = doc.data_key.clone() else { continue };
        if w.key_id == master.current().id() {
            continue;
        }
        let id = doc.id.clone();
        let key = master.unwrap_key(id.as_str(), &w).await.map_err(|e| match e {
            SecretError::Kms(why) => StoreError::Unavailable(why),
            e => invalid(format!("tenant {id}: data_key: {e}")),
        })?;
        doc.data_key = Some(wrap(master, &id, &key).await?);
        let version = doc.version;
        match store.put_tenant(id.clone(), doc, Some(version)).await {
            Ok(_) => done += 1,
            Err(StoreError::VersionConflict { .. }) => left += 1,
            Err(e) => return Err(e),
        }
    }
    Ok((done, left, next))
}
