#!/usr/bin/env python3
"""Discovers Keyward's gRPC API through server reflection, as a client with no .proto file would,
then uses it: the official Python reflection client, and the v1 protocol it does not speak.

    discover.py --version v1alpha|v1 --address 127.0.0.1:PORT --tenant ID --expect FDS...

1. Lists the services through `grpc.reflection.<version>.ServerReflection`:
   - v1alpha: grpcio-reflection's `ProtoReflectionDescriptorDatabase`, unmodified. The current
     release (pinned in scripts/test) speaks v1alpha only; a server with only v1 answers
     UNIMPLEMENTED and this step fails.
   - v1: `V1ReflectionDatabase` below, with request and response classes built at run time from
     the v1alpha descriptor renamed to package `grpc.reflection.v1` (the two protocols have the
     same messages and field numbers; grpc/grpc's reflection/v1/reflection.proto is a copy of
     v1alpha's). That assumption is checked: the `grpc.reflection.v1` messages the server itself
     publishes must have exactly the shape of the ones built here.
2. Resolves every listed service, every method's input and output type and every type they
   reach, with each file's dependencies (google/protobuf/timestamp.proto ...), into a descriptor
   pool fed only by the server.
3. Checks that each file of the descriptor sets named by --expect (written by the Rust test from
   the sets compiled into the binary) was discovered, equal to the compiled one, and that each of
   their services is listed.
4. Through messages built only from the discovered descriptors: CreateTenant, RegisterKey (the
   local key "default"), GetTenant (a Timestamp decoded), Encrypt and Decrypt of random bytes;
   checks the round trip.

Prints one JSON report on stdout; on any failure prints the reason on stderr and exits 1.
Run by tests/e2e/tests/reflection.rs with the Python of `KEYWARD_TEST_PYTHON` (scripts/test).
"""

import argparse
import json
import os
import sys

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.descriptor_database import DescriptorDatabase
    from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
except ImportError as error:
    sys.exit(
        f"discover.py: {error}. It needs grpcio, grpcio-reflection and protobuf (the versions "
        "pinned in scripts/test): run scripts/test, which installs them into target/test-venv "
        "and exports KEYWARD_TEST_PYTHON"
    )

# Every call is bounded: a hung server fails the test instead of stalling it.
TIMEOUT_SECONDS = 20
V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


class Failure(Exception):
    """A check failed; the message says which and why."""


def check(condition, message):
    if not condition:
        raise Failure(message)


def v1_message_classes():
    """ServerReflectionRequest and ServerReflectionResponse of `grpc.reflection.v1`, built at
    run time from grpcio-reflection's v1alpha descriptor with the package renamed."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")

    def rename(messages):
        for message in messages:
            for field in message.field:
                if field.type_name.startswith(old):
                    field.type_name = new + field.type_name[len(old) :]
            rename(message.nested_type)

    rename(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto.SerializeToString())
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}"))
        for name in ("ServerReflectionRequest", "ServerReflectionResponse")
    )


class V1ReflectionDatabase(DescriptorDatabase):
    """A descriptor database fed by `grpc.reflection.v1.ServerReflection` (the counterpart of
    grpcio-reflection's v1alpha `ProtoReflectionDescriptorDatabase`)."""

    def __init__(self, channel):
        super().__init__()
        self.request_class, self.response_class = v1_message_classes()
        self._call = channel.stream_stream(
            V1_METHOD,
            request_serializer=self.request_class.SerializeToString,
            response_deserializer=self.response_class.FromString,
        )

    def _ask(self, key, **request):
        responses = list(self._call(iter([self.request_class(**request)]), timeout=TIMEOUT_SECONDS))
        check(len(responses) == 1, f"v1 reflection: {len(responses)} responses to one request")
        response = responses[0]
        if response.WhichOneof("message_response") == "error_response":
            error = response.error_response
            check(
                error.error_code == grpc.StatusCode.NOT_FOUND.value[0],
                f"v1 reflection: unexpected error for {key!r}: {error}",
            )
            raise KeyError(key)
        return response

    def _add_files(self, response):
        for raw in response.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            try:
                super().FindFileByName(proto.name)
            except KeyError:
                self.Add(proto)

    def get_services(self):
        response = self._ask("", list_services="")
        return [service.name for service in response.list_services_response.service]

    def FindFileByName(self, name):  # noqa: N802 (the DescriptorDatabase interface)
        try:
            return super().FindFileByName(name)
        except KeyError:
            self._add_files(self._ask(name, file_by_filename=name))
            return super().FindFileByName(name)

    def FindFileContainingSymbol(self, symbol):  # noqa: N802
        try:
            return super().FindFileContainingSymbol(symbol)
        except KeyError:
            self._add_files(self._ask(symbol, file_containing_symbol=symbol))
            return super().FindFileContainingSymbol(symbol)


def shape(message, seen=None):
    """A message's fields (name, number, type, repeated or not, oneof, and the shape of
    message-typed fields), without the package: what the wire format depends on."""
    seen = set() if seen is None else seen
    if message.full_name in seen:
        return message.name
    seen.add(message.full_name)
    return [
        (
            field.name,
            field.number,
            field.type,
            field.is_repeated,
            field.containing_oneof.name if field.containing_oneof else None,
            shape(field.message_type, seen) if field.message_type else None,
        )
        for field in message.fields
    ]


def reachable_types(message, found):
    """Adds `message` and every message and enum type its fields reach to `found`."""
    if message.full_name in found:
        return
    found[message.full_name] = message
    # Building the class proves the pool resolved the type completely.
    message_factory.GetMessageClass(message)
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            reachable_types(field.message_type, found)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            found[field.enum_type.full_name] = field.enum_type


def files_with_dependencies(file, found):
    if file.name in found:
        return
    found.add(file.name)
    for dependency in file.dependencies:
        files_with_dependencies(dependency, found)


def discover(database, pool, services):
    """Resolves every service, method and type; returns (methods, files, types)."""
    methods, files, types = [], set(), {}
    for name in services:
        try:
            service = pool.FindServiceByName(name)
        except KeyError as error:
            raise Failure(f"service {name} is listed but its descriptor is not served: {error}")
        files_with_dependencies(service.file, files)
        check(service.methods, f"service {name} has no methods")
        for method in service.methods:
            reachable_types(method.input_type, types)
            reachable_types(method.output_type, types)
            methods.append(
                f"/{name}/{method.name} ({method.input_type.full_name}) -> "
                f"{method.output_type.full_name}"
            )
    for name in files:
        # Every dependency was fetched from the server as its own file.
        check(database.FindFileByName(name).name == name, f"file {name} not served by name")
    return methods, sorted(files), types


def check_expected(database, services, expect_files):
    """Each file compiled into the binary is served unchanged, and its services are listed."""
    compared = []
    for path in expect_files:
        with open(path, "rb") as f:
            expected = descriptor_pb2.FileDescriptorSet.FromString(f.read())
        for proto in expected.file:
            try:
                served = database.FindFileByName(proto.name)
            except KeyError:
                raise Failure(f"{proto.name} is compiled into the server but not served")
            check(served == proto, f"{proto.name} is served differently from the compiled file")
            for service in proto.service:
                name = f"{proto.package}.{service.name}" if proto.package else service.name
                check(name in services, f"service {name} is served but not listed: {services}")
            compared.append(proto.name)
    check(compared, "--expect named no files")
    return compared


class Dynamic:
    """Calls unary methods with messages built only from the discovered descriptors."""

    def __init__(self, channel, pool):
        self.channel, self.pool = channel, pool

    def message(self, full_name, **fields):
        descriptor = self.pool.FindMessageTypeByName(full_name)
        return message_factory.GetMessageClass(descriptor)(**fields)

    def call(self, service_name, method_name, request):
        method = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        check(
            request.DESCRIPTOR is method.input_type,
            f"{method_name} takes {method.input_type.full_name}",
        )
        response_class = message_factory.GetMessageClass(method.output_type)
        call = self.channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        return call(request, timeout=TIMEOUT_SECONDS)

    def enum_value(self, enum_full_name, value_name):
        return self.pool.FindEnumTypeByName(enum_full_name).values_by_name[value_name].number


def round_trip(channel, pool, tenant):
    api = Dynamic(channel, pool)
    tenants, crypto = "keyward.v1.TenantService", "keyward.v1.CryptoService"
    created = api.call(
        tenants,
        "CreateTenant",
        api.message("keyward.v1.CreateTenantRequest", tenant_id=tenant, display_name="Reflected"),
    )
    check(created.tenant_id == tenant, f"CreateTenant answered {created}")
    register = api.message("keyward.v1.RegisterKeyRequest", tenant_id=tenant)
    register.local.key_name = "default"  # a oneof member, a message
    api.call(tenants, "RegisterKey", register)
    got = api.call(tenants, "GetTenant", api.message("keyward.v1.GetTenantRequest", tenant_id=tenant))
    check(
        got.created_at.DESCRIPTOR.full_name == "google.protobuf.Timestamp"
        and got.created_at.seconds > 1_600_000_000,
        f"GetTenant's created_at is not a recent google.protobuf.Timestamp: {got}",
    )
    check(
        got.active_key.state == api.enum_value("keyward.v1.KekState", "KEK_STATE_ACTIVE"),
        f"the registered key is not active: {got}",
    )

    plaintext = os.urandom(48)
    context = {"purpose": "reflection-test"}
    encrypt = api.message("keyward.v1.EncryptRequest", tenant_id=tenant, plaintext=plaintext)
    encrypt.encryption_context.update(context)
    sealed = api.call(crypto, "Encrypt", encrypt)
    check(len(sealed.envelope) > len(plaintext), "Encrypt returned no envelope")
    check(plaintext not in sealed.envelope, "the envelope contains the plaintext")
    check(
        len(sealed.dek_id) == 32 and all(c in "0123456789abcdef" for c in sealed.dek_id),
        f"dek_id {sealed.dek_id!r}",
    )
    decrypt = api.message("keyward.v1.DecryptRequest", tenant_id=tenant, envelope=sealed.envelope)
    decrypt.encryption_context.update(context)
    opened = api.call(crypto, "Decrypt", decrypt)
    check(opened.plaintext == plaintext, "Decrypt did not return the plaintext Encrypt sealed")
    return {
        "tenant": tenant,
        "created_at_seconds": got.created_at.seconds,
        "dek_id": sealed.dek_id,
        "context": context,
        "plaintext_hex": plaintext.hex(),
        "envelope_hex": sealed.envelope.hex(),
    }


def run(args):
    options = [("grpc.enable_http_proxy", 0)]  # 127.0.0.1 directly, whatever http_proxy says
    with grpc.insecure_channel(args.address, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT_SECONDS)
        if args.version == "v1alpha":
            database = ProtoReflectionDescriptorDatabase(channel)
        else:
            database = V1ReflectionDatabase(channel)
        try:
            services = sorted(database.get_services())
        except grpc.RpcError as error:
            raise Failure(
                f"listing services through grpc.reflection.{args.version}: "
                f"{error.code()} {error.details()}"
            )
        check(services, f"grpc.reflection.{args.version} lists no services")
        pool = descriptor_pool.DescriptorPool(database)
        methods, files, types = discover(database, pool, services)
        compared = check_expected(database, services, args.expect)
        if args.version == "v1":
            served = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
            served_response = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
            check(
                shape(served) == shape(database.request_class.DESCRIPTOR)
                and shape(served_response) == shape(database.response_class.DESCRIPTOR),
                "the server's grpc.reflection.v1 messages differ from the ones built here",
            )
        return {
            "version": args.version,
            "services": services,
            "methods": methods,
            "files": files,
            "compared_files": compared,
            "types": len(types),
            "round_trip": round_trip(channel, pool, args.tenant),
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", choices=["v1alpha", "v1"], required=True)
    parser.add_argument("--address", required=True, help="host:port, plaintext")
    parser.add_argument("--tenant", required=True, help="a tenant id this run creates")
    parser.add_argument(
        "--expect",
        nargs="+",
        required=True,
        help="encoded FileDescriptorSet files whose every file must be served unchanged",
    )
    args = parser.parse_args()
    try:
        report = run(args)
    except Failure as failure:
        sys.exit(f"discover.py --version {args.version}: {failure}")
    except grpc.RpcError as error:
        sys.exit(f"discover.py --version {args.version}: {error.code()} {error.details()}")
    except grpc.FutureTimeoutError:
        sys.exit(f"discover.py: no connection to {args.address} within {TIMEOUT_SECONDS} s")
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
