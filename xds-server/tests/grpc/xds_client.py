"""A gRPC client resolving `xds:///my-service` through the xDS server under test.

argv: <backend port> <bootstrap path>. Serves grpc.health.v1 on the backend port, calls it
through the xDS-resolved channel, prints the status and exits 0 when it is SERVING.
"""
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

backend_port, bootstrap = int(sys.argv[1]), sys.argv[2]

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
servicer = health.HealthServicer()
servicer.set("", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
server.add_insecure_port(f"127.0.0.1:{backend_port}")
server.start()

import os

os.environ["GRPC_XDS_BOOTSTRAP"] = bootstrap
channel = grpc.insecure_channel("xds:///my-service")
try:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20, wait_for_ready=True)
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
except grpc.RpcError as e:
    print(f"RPC failed: {e.code()} {e.details()}", file=sys.stderr)
    sys.exit(1)
finally:
    server.stop(0)
