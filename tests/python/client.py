"""Round trips through Keelson's Kubernetes API with the official Python
client (`kubernetes` on PyPI): create, read, list with selectors, watch,
patch, scale and delete. Usage: client.py KUBECONFIG. Prints "ok" at the end;
any failure raises."""

import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "default"

names = [n.metadata.name for n in core.list_namespace().items]
assert {"default", "kube-system"} <= set(names), names

listed = core.list_namespaced_config_map(ns, label_selector="suite=python")
assert listed.items == [], listed.items

made = core.create_namespaced_config_map(
    ns,
    client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="py-config", labels={"suite": "python"}),
        data={"color": "blue"},
    ),
)
assert made.metadata.uid and made.metadata.resource_version, made.metadata

# A watch from the list's version sees the creation.
events = watch.Watch().stream(
    core.list_namespaced_config_map,
    ns,
    label_selector="suite=python",
    resource_version=listed.metadata.resource_version,
    timeout_seconds=10,
)
first = next(events)
assert first["type"] == "ADDED" and first["object"].metadata.name == "py-config", first

found = core.list_namespaced_config_map(ns, label_selector="suite=python").items
assert [c.metadata.name for c in found] == ["py-config"], found
assert core.list_namespaced_config_map(ns, label_selector="suite!=python,suite").items == []

patched = core.patch_namespaced_config_map("py-config", ns, {"data": {"size": "L"}})
assert patched.data == {"color": "blue", "size": "L"}, patched.data

try:
    stale = core.read_namespaced_config_map("py-config", ns)
    stale.metadata.resource_version = made.metadata.resource_version
    core.replace_namespaced_config_map("py-config", ns, stale)
    raise AssertionError("a stale replace was accepted")
except ApiException as error:
    assert error.status == 409, error

deployment = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-web"),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx:1.25")]),
        ),
    ),
)
apps.create_namespaced_deployment(ns, deployment)
apps.patch_namespaced_deployment_scale("py-web", ns, {"spec": {"replicas": 3}})
read = apps.read_namespaced_deployment("py-web", ns)
assert read.spec.replicas == 3 and read.metadata.generation == 2, (read.spec.replicas, read.metadata.generation)
assert read.spec.strategy.rolling_update.max_surge == "25%", read.spec.strategy

apps.delete_namespaced_deployment("py-web", ns)
core.delete_namespaced_config_map("py-config", ns)
try:
    core.read_namespaced_config_map("py-config", ns)
    raise AssertionError("a deleted ConfigMap was found")
except ApiException as error:
    assert error.status == 404, error

print("ok")
