"""A HookProvider for the broker's emqx_exhook plugin, in Python (grpcio).

It speaks EMQX's exhook.proto (emqx.exhook.v2), so it works with EMQX 5 too. It refuses the
login of user mallory, denies publishing and subscribing under secret/, and moves what is
published under raw/ to clean/ with the payload in capitals. With --counts FILE it also asks
for every other hook and keeps in FILE how many of each event it got, as JSON.

Generate the stubs it imports first: README.md, "Writing a hook server in Python".
Run: python3 examples/exhook_server.py [PORT] [--stubs DIR] [--counts FILE] (port 9000).
"""
import argparse
from concurrent import futures
import json
import os
import re
import sys
import threading

parser = argparse.ArgumentParser(description="An exhook HookProvider (emqx.exhook.v2).")
parser.add_argument("port", type=int, nargs="?", default=9000)
parser.add_argument("--stubs", metavar="DIR", help="where exhook_v2_pb2*.py are (else PYTHONPATH)")
parser.add_argument("--counts", metavar="FILE", help="ask for every hook, count each event in FILE")
args = parser.parse_args()
if args.stubs:
    sys.path.insert(0, args.stubs)

import grpc  # noqa: E402  (after the stubs' directory is on the path)
import exhook_v2_pb2 as pb  # noqa: E402
import exhook_v2_pb2_grpc as rpc  # noqa: E402

STOP, IGNORE = pb.ValuedResponse.STOP_AND_RETURN, pb.ValuedResponse.IGNORE
RPCS = [method.name for method in pb.DESCRIPTOR.services_by_name["HookProvider"].methods]


def event(rpc_name):
    """EMQX's name of the event an rpc carries: OnClientConnack -> client.connack."""
    first, rest = re.fullmatch(r"On([A-Z][a-z]+)(\w+)", rpc_name).groups()
    return f"{first.lower()}.{rest.lower()}"


class HookProvider(rpc.HookProviderServicer):
    def OnProviderLoaded(self, request, context):
        print(f"loaded by {request.broker.sysdescr} {request.broker.version}", flush=True)
        if args.counts:  # every hook, on every topic
            return pb.LoadedResponse(hooks=[
                pb.HookSpec(name=event(name)) for name in RPCS if not name.startswith("OnProvider")
            ])
        # Only these are called: authenticate, authorize for every topic, publish on raw/#.
        return pb.LoadedResponse(hooks=[
            pb.HookSpec(name="client.authenticate"),
            pb.HookSpec(name="client.authorize"),
            pb.HookSpec(name="message.publish", topics=["raw/#"]),
        ])

    def OnClientAuthenticate(self, request, context):
        if request.clientinfo.username == "mallory":
            print(f"refuse {request.clientinfo.clientid}: mallory", flush=True)
            return pb.ValuedResponse(type=STOP, bool_result=False)
        return pb.ValuedResponse(type=IGNORE)  # the broker decides, as without this server

    def OnClientAuthorize(self, request, context):
        if request.topic.startswith("secret/"):
            print(f"deny {request.clientinfo.clientid}: {request.topic}", flush=True)
            return pb.ValuedResponse(type=STOP, bool_result=False)
        return pb.ValuedResponse(type=IGNORE)

    def OnMessagePublish(self, request, context):
        message = request.message
        if not message.topic.startswith("raw/"):
            return pb.ValuedResponse(type=IGNORE)
        message.topic = "clean/" + message.topic.removeprefix("raw/")
        message.payload = message.payload.upper()
        return pb.ValuedResponse(type=pb.ValuedResponse.CONTINUE, message=message)


# Every other rpc (the events that only tell) is answered EmptySuccess.
for name in RPCS:
    if name not in vars(HookProvider):
        setattr(HookProvider, name, lambda self, request, context: pb.EmptySuccess())


class Counts(grpc.ServerInterceptor):
    """Counts every call by event name; FILE is replaced whole, so a reader never sees half."""

    def __init__(self, path):
        self.path, self.counts, self.lock = path, {}, threading.Lock()

    def intercept_service(self, continuation, details):
        with self.lock:
            name = event(details.method.rsplit("/", 1)[-1])
            self.counts[name] = self.counts.get(name, 0) + 1
            with open(self.path + ".tmp", "w") as file:
                json.dump(self.counts, file, sort_keys=True)
            os.replace(self.path + ".tmp", self.path)
        return continuation(details)


if __name__ == "__main__":
    interceptors = [Counts(args.counts)] if args.counts else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors)
    rpc.add_HookProviderServicer_to_server(HookProvider(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")  # 0: any free port
    server.start()
    print(f"HookProvider listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()
