//! What every cluster has from its first moment: the system namespaces,
//! the `kubernetes` and `kube-dns` Services, and the default StorageClass.
//! Every member makes whichever is missing when it starts; creation is
//! create-if-absent in the store, so members starting together agree.

use serde_json::{Value, json};

use super::{Api, Result, SYSTEM_NAMESPACES, encode};
use crate::allocate;
use crate::object;
use crate::resources;
use crate::status::ApiError;

use super::shape::defaults_on_create;
use crate::defaults;

impl Api {
    /// Creates the objects every cluster has, those missing.
    pub async fn ensure_system_objects(&self) -> Result<()> {
        let namespaces =
            resources::find("", "v1", "namespaces").ok_or_else(ApiError::no_such_path)?;
        for name in SYSTEM_NAMESPACES {
            let mut object = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            object::prepare_create(namespaces, &mut object, None)?;
            self.store
                .create(namespaces.key(None, name).as_bytes(), encode(&object))
                .await?;
        }
        // The default StorageClass: directories on the node a claim's first
        // pod goes to (k3s's local-path, built in).
        let classes = resources::find("storage.k8s.io", "v1", "storageclasses")
            .ok_or_else(ApiError::no_such_path)?;
        let mut class = json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "local-path", "annotations": {
                crate::controllers::volume::DEFAULT_CLASS: "true"}},
            "provisioner": crate::controllers::volume::LOCAL_PATH,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        });
        object::prepare_create(classes, &mut class, None)?;
        self.store
            .create(classes.key(None, "local-path").as_bytes(), encode(&class))
            .await?;
        // The `kubernetes` Service, on the range's first address, as every
        // cluster has it.
        self.ensure_service(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": self.services.first().to_string(),
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        }))
        .await?;
        // `kube-dns`, on the tenth: no selector, no endpoints; every node's
        // agent answers at its address.
        self.ensure_service(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                                    "kubernetes.io/name": "CoreDNS"}},
            "spec": {"clusterIP": self.services.dns().to_string(), "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]},
        }))
        .await
    }

    /// Creates a Service every cluster has, unless it exists.
    async fn ensure_service(&self, mut service: Value) -> Result<()> {
        let services = resources::find("", "v1", "services").ok_or_else(ApiError::no_such_path)?;
        let namespace = service["metadata"]["namespace"].as_str().map(str::to_owned);
        let name = service["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = services.key(namespace.as_deref(), &name);
        if self.store.get(key.as_bytes()).await?.is_some() {
            return Ok(());
        }
        object::prepare_create(services, &mut service, namespace.as_deref())?;
        defaults::apply(services, &mut service);
        defaults_on_create(services, &mut service);
        allocate::service(&self.store, self.services, &mut service, None)
            .await
            .or_else(|e| {
                // Taken by a member that got here first.
                if e.code == 422 { Ok(json!({})) } else { Err(e) }
            })?;
        self.store.create(key.as_bytes(), encode(&service)).await?;
        Ok(())
    }
}
