"""A HookProvider for the broker's emqx_exhook plugin, in Python (grpcio).

It speaks EMQX's exhook.proto (emqx.exhook.v2), so it works with EMQX 5 too. It denies
publishing and subscribing under secret/, and moves what is published under raw/ to clean/
with the payload in capitals. Generate the stubs it imports first: README.md, "Writing a
hook server in Python". Run: python3 examples/exhook_server.py [PORT] (default 9000).
"""
from concurrent import futures
import sys

import grpc

import exhook_v2_pb2 as pb
import exhook_v2_pb2_grpc as rpc


class HookProvider(rpc.HookProviderServicer):
    def OnProviderLoaded(self, request, context):
        print(f"loaded by {request.broker.sysdescr} {request.broker.version}", flush=True)
        # Only these are called: authorize for every topic, message.publish for raw/#.
        return pb.LoadedResponse(hooks=[
            pb.HookSpec(name="client.authorize"),
            pb.HookSpec(name="message.publish", topics=["raw/#"]),
        ])

    def OnProviderUnloaded(self, request, context):
        print("unloaded", flush=True)
        return pb.EmptySuccess()

    def OnClientAuthorize(self, request, context):
        if request.topic.startswith("secret/"):
            print(f"deny {request.clientinfo.clientid}: {request.topic}", flush=True)
            return pb.ValuedResponse(type=pb.ValuedResponse.STOP_AND_RETURN, bool_result=False)
        return pb.ValuedResponse(type=pb.ValuedResponse.IGNORE)

    def OnMessagePublish(self, request, context):
        message = request.message
        message.topic = "clean/" + message.topic.removeprefix("raw/")
        message.payload = message.payload.upper()
        return pb.ValuedResponse(type=pb.ValuedResponse.CONTINUE, message=message)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rpc.add_HookProviderServicer_to_server(HookProvider(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"HookProvider listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()
