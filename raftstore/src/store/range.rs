//! Range requests, in two steps: [`plan`] resolves revisions in the index
//! (under the store's read lock), [`finish`] fetches values, filters, sorts
//! and truncates exactly as etcd's range applier does.

use std::cmp::Ordering;

use keelson_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use keelson_proto::etcdserverpb::{RangeRequest, RangeResponse};
use keelson_proto::mvccpb::KeyValue;

use crate::error::{Error, Result};
use crate::index::{KeyIndex, KeyRange};
use crate::revision::Revision;

/// The revisions a range will read, and the number of keys it covers.
#[derive(Debug)]
pub(crate) struct Plan {
    revs: Vec<Revision>,
    count: i64,
}

/// etcd's normalisation: results come in ascending key order already, so a
/// KEY/ASCEND sort is no sort, and any other target with no order means ASCEND.
fn sort_of(request: &RangeRequest) -> Result<(SortOrder, SortTarget)> {
    let order = SortOrder::try_from(request.sort_order).map_err(|_| Error::InvalidSortOption)?;
    let target = SortTarget::try_from(request.sort_target).map_err(|_| Error::InvalidSortOption)?;
    let order = match (target, order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (SortTarget::Key, order) => order,
        (_, SortOrder::None) => SortOrder::Ascend,
        (_, order) => order,
    };
    Ok((order, target))
}

fn has_revision_filters(request: &RangeRequest) -> bool {
    request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0
}

/// Resolves which revisions `request` reads at revision `at`.
pub(crate) fn plan(index: &KeyIndex, at: i64, request: &RangeRequest) -> Result<Plan> {
    let (order, _) = sort_of(request)?;
    let fetch_all = order != SortOrder::None || has_revision_filters(request);
    // One more than the limit tells whether there is `more`.
    let wanted = match request.limit {
        limit if limit > 0 && !fetch_all => usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1),
        _ => usize::MAX,
    };
    let wanted = if request.count_only { 0 } else { wanted };
    let mut plan = Plan {
        revs: Vec::new(),
        count: 0,
    };
    index.visit(
        KeyRange::new(&request.key, &request.range_end),
        at,
        |_, entry| {
            plan.count += 1;
            if plan.revs.len() < wanted {
                plan.revs.push(entry.modified);
            }
            true
        },
    );
    Ok(plan)
}

/// Fetches the planned values with `fetch` and shapes the response (no header).
pub(crate) fn finish(
    plan: Plan,
    request: &RangeRequest,
    mut fetch: impl FnMut(Revision) -> Result<KeyValue>,
) -> Result<RangeResponse> {
    let mut kvs = plan
        .revs
        .into_iter()
        .map(&mut fetch)
        .collect::<Result<Vec<_>>>()?;
    if has_revision_filters(request) {
        kvs.retain(|kv| passes_revision_filters(kv, request));
    }
    let (order, target) = sort_of(request)?;
    if order != SortOrder::None {
        let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        match order {
            SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
            _ => kvs.sort_by(by),
        }
    }
    let mut more = false;
    if let Ok(limit) = usize::try_from(request.limit)
        && limit > 0
        && kvs.len() > limit
    {
        kvs.truncate(limit);
        more = true;
    }
    if request.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(RangeResponse {
        header: None,
        kvs,
        more,
        count: plan.count,
    })
}

fn passes_revision_filters(kv: &KeyValue, request: &RangeRequest) -> bool {
    let above = |value: i64, min: i64| min == 0 || value >= min;
    let below = |value: i64, max: i64| max == 0 || value <= max;
    above(kv.mod_revision, request.min_mod_revision)
        && below(kv.mod_revision, request.max_mod_revision)
        && above(kv.create_revision, request.min_create_revision)
        && below(kv.create_revision, request.max_create_revision)
}
