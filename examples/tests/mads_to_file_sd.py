"""Reads a MADS DiscoveryResponse (JSON) on stdin the way Prometheus's kuma_sd_configs does, and
prints the targets as Prometheus file_sd JSON.

The response is parsed by protobuf's own JSON mapping (google.protobuf.json_format), into an
envoy.service.discovery.v3.DiscoveryResponse whose resources are Any messages resolved through
a descriptor pool that knows kuma.observability.v1.MonitoringAssignment (with Kuma's field
numbers): the same rules Prometheus's Go client applies (protojson, unknown fields discarded,
types resolved by @type). A response it cannot read fails here with protobuf's error.

Each target then gets the labels Prometheus's kuma discovery gives it: instance, __address__,
__scheme__, __metrics_path__, __meta_kuma_{mesh,service,dataplane} and
__meta_kuma_label_<sanitised name> for every label of the assignment and of the target.
"""

import json
import re
import sys

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format
from google.protobuf import message_factory

TYPE_URL = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment"

F = descriptor_pb2.FieldDescriptorProto


def field(msg, name, number, kind, label=F.LABEL_OPTIONAL, type_name=None, json_name=None):
    f = msg.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        f.type_name = type_name
    if json_name:
        f.json_name = json_name
    return f


def map_entry(msg, entry_name):
    entry = msg.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    field(entry, "key", 1, F.TYPE_STRING)
    field(entry, "value", 2, F.TYPE_STRING)


def build_pool():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)

    discovery = descriptor_pb2.FileDescriptorProto(
        name="discovery_subset.proto", package="envoy.service.discovery.v3", syntax="proto3"
    )
    discovery.dependency.append("google/protobuf/any.proto")
    resp = discovery.message_type.add(name="DiscoveryResponse")
    field(resp, "version_info", 1, F.TYPE_STRING, json_name="versionInfo")
    field(resp, "resources", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".google.protobuf.Any")
    field(resp, "canary", 3, F.TYPE_BOOL)
    field(resp, "type_url", 4, F.TYPE_STRING, json_name="typeUrl")
    field(resp, "nonce", 5, F.TYPE_STRING)
    pool.Add(discovery)

    mads = descriptor_pb2.FileDescriptorProto(
        name="mads_subset.proto", package="kuma.observability.v1", syntax="proto3"
    )
    ma = mads.message_type.add(name="MonitoringAssignment")
    field(ma, "mesh", 2, F.TYPE_STRING)
    field(ma, "service", 3, F.TYPE_STRING)
    target = ma.nested_type.add(name="Target")
    field(target, "name", 1, F.TYPE_STRING)
    field(target, "scheme", 2, F.TYPE_STRING)
    field(target, "address", 3, F.TYPE_STRING)
    field(target, "metrics_path", 4, F.TYPE_STRING, json_name="metricsPath")
    map_entry(target, "LabelsEntry")
    field(
        target, "labels", 5, F.TYPE_MESSAGE, F.LABEL_REPEATED,
        ".kuma.observability.v1.MonitoringAssignment.Target.LabelsEntry",
    )
    field(
        ma, "targets", 4, F.TYPE_MESSAGE, F.LABEL_REPEATED,
        ".kuma.observability.v1.MonitoringAssignment.Target",
    )
    map_entry(ma, "LabelsEntry")
    field(
        ma, "labels", 5, F.TYPE_MESSAGE, F.LABEL_REPEATED,
        ".kuma.observability.v1.MonitoringAssignment.LabelsEntry",
    )
    pool.Add(mads)
    return pool


def sanitize(name):
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def main():
    pool = build_pool()
    response_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("envoy.service.discovery.v3.DiscoveryResponse")
    )
    assignment_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("kuma.observability.v1.MonitoringAssignment")
    )
    response = json_format.Parse(
        sys.stdin.read(), response_type(), ignore_unknown_fields=True, descriptor_pool=pool
    )
    if response.type_url != TYPE_URL:
        sys.exit(f"received invalid typeURL for Kuma MADS v1 Resource: {response.type_url}")
    groups = []
    for resource in response.resources:
        assignment = assignment_type()
        if not resource.Unpack(assignment):
            sys.exit(f"a resource is not a MonitoringAssignment: {resource.type_url}")
        common = {"__meta_kuma_label_" + sanitize(k): v for k, v in assignment.labels.items()}
        common["__meta_kuma_mesh"] = assignment.mesh
        common["__meta_kuma_service"] = assignment.service
        for t in assignment.targets:
            labels = {"__meta_kuma_label_" + sanitize(k): v for k, v in t.labels.items()}
            labels.update(common)
            labels.update(
                {
                    "__meta_kuma_dataplane": t.name,
                    "instance": t.name,
                    "__scheme__": t.scheme,
                    "__metrics_path__": t.metrics_path,
                }
            )
            groups.append({"targets": [t.address], "labels": labels})
    print(json.dumps(groups))


if __name__ == "__main__":
    main()
