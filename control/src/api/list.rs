//! Lists: from the watch cache, or from the store at a revision when a
//! paginated list continues or one exact version is asked for.

use axum::body::Body;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::request::{Query, decode_continue, encode_continue};
use super::{Api, Result, Target, cache, json_bytes, json_response, watch};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::table;

impl Api {
    /// A list: from the watch cache, unless it continues a paginated list
    /// or asks for one exact version (the store has those), or the cache
    /// cannot catch up in time for a consistent read.
    pub(super) async fn list(
        &self,
        target: &Target,
        query: &Query,
        table: bool,
    ) -> Result<Response<Body>> {
        let exact = query.get("resourceVersionMatch") == Some("Exact");
        if query.get("continue").is_none() && !exact {
            let at = watch::ReadAt::of(query)?;
            match self.cache_at(target.resource, at).await {
                Ok(cache) => return self.list_cached(&cache, target, query, at, table),
                Err(error) if error.code == 504 && at == watch::ReadAt::Consistent => {}
                Err(error) => return Err(error),
            }
        }
        let list = self.list_from_store(target, query, table).await?;
        Ok(json_response(StatusCode::OK, &list))
    }

    fn list_cached(
        &self,
        cache: &cache::WatchCache,
        target: &Target,
        query: &Query,
        at: watch::ReadAt,
        table: bool,
    ) -> Result<Response<Body>> {
        let resource = target.resource;
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        // As Kubernetes' cache does, `resourceVersion=0` answers everything at once.
        let limit = match at {
            watch::ReadAt::Any => 0,
            _ => query.number("limit")?.unwrap_or(0).max(0) as usize,
        };
        let node = (resource.plural == "pods")
            .then(|| fields.pinned("spec.nodeName").map(str::to_owned))
            .flatten();
        let prefix = resource.prefix(target.namespace.as_deref());
        let selection = cache::Selection::new(labels, fields);
        let listed = cache.list(prefix.as_bytes(), node.as_deref(), limit, &selection);
        let rv = listed.revision.to_string();
        let next = listed
            .next
            .map(|key| encode_continue(listed.revision, &key));
        if table {
            let items: Vec<Value> = listed.items.iter().map(|c| c.object()).collect();
            let table = table::table(resource.kind, &items, &rv, next.as_deref());
            return Ok(json_response(StatusCode::OK, &table));
        }
        let mut meta = json!({"resourceVersion": rv});
        if let Some(token) = next {
            meta["continue"] = json!(token);
        }
        let mut body = Vec::with_capacity(256 + listed.items.len() * 2048);
        let head = json!({
            "kind": format!("{}List", resource.kind),
            "apiVersion": resource.api_version(),
            "metadata": meta,
        })
        .to_string();
        // `{"kind":…,"metadata":{…}` and then the items, each written once.
        body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        body.extend_from_slice(b",\"items\":[");
        for (i, cached) in listed.items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&cached.json);
        }
        body.extend_from_slice(b"]}");
        Ok(json_bytes(StatusCode::OK, body))
    }

    pub(super) async fn list_from_store(
        &self,
        target: &Target,
        query: &Query,
        table: bool,
    ) -> Result<Value> {
        let resource = target.resource;
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let limit = query.number("limit")?.unwrap_or(0).max(0);
        let prefix = resource.prefix(target.namespace.as_deref());
        let (mut revision, mut start) = match query.get("continue") {
            Some(token) => {
                let (revision, start) = decode_continue(token)?;
                (revision, Some(start))
            }
            None => (0, None),
        };
        if start.is_none()
            && query.get("resourceVersionMatch") == Some("Exact")
            && let Some(rv) = query.number("resourceVersion")?
        {
            revision = rv;
        }
        let mut items = Vec::new();
        let mut next = None;
        loop {
            let page = self
                .store
                .list(prefix.as_bytes(), start.as_deref(), limit, revision)
                .await?;
            revision = page.revision;
            let count = page.items.len();
            // The key after the last one read: where a continuation starts.
            let mut after = None;
            for (i, stored) in page.items.iter().enumerate() {
                let object = self.codec.decode(resource, stored)?;
                if labels.matches(&object) && fields.matches(&object) {
                    items.push(object);
                }
                let mut key = stored.key.clone();
                key.push(0);
                // A full page: more follow if this page or the store has them.
                if limit > 0 && items.len() as i64 == limit && (i + 1 < count || page.more) {
                    next = Some(encode_continue(revision, &key));
                    break;
                }
                after = Some(key);
            }
            match after {
                Some(key) if next.is_none() && page.more => start = Some(key),
                _ => break,
            }
        }
        let rv = revision.to_string();
        if table {
            return Ok(table::table(resource.kind, &items, &rv, next.as_deref()));
        }
        let mut meta = json!({"resourceVersion": rv});
        if let Some(token) = next {
            meta["continue"] = json!(token);
        }
        Ok(json!({
            "kind": format!("{}List", resource.kind),
            "apiVersion": resource.api_version(),
            "metadata": meta,
            "items": items,
        }))
    }
}
