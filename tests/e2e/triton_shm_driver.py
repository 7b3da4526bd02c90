"""tritonclient scenarios of system shared memory against a running trtserve.

Like triton_driver.py (whose helpers it shares), this module imports only tritonclient, numpy
and the standard library (tritonclient cannot live next to trtserve.protocol);
test_tritonclient_shared_memory.py runs each function in a spawned interpreter. Every
shared-memory object is created here with tritonclient's own helpers under a key the test
passes in (it names the test process, which removes whatever a failed scenario may leave),
and destroyed before the scenario returns.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from triton_driver import WIDTH, _client, _operands
from tritonclient.utils import InferenceServerException

MODEL = "simple"
ROW_BYTES = WIDTH * 4
# Bounds every wait for a server answer, so a hang fails the test instead of blocking it.
TIMEOUT_S = 30.0
# What unwritten bytes of an object hold, so that a write the server did not make shows.
FILL = 0xAB
OBJECT_DIR = "/dev/shm"

_Scenario = TypeVar("_Scenario", bound=Callable[..., Any])


def scenario(function: _Scenario) -> _Scenario:
    """Re-raise any failure as an AssertionError holding the traceback as text (protobuf
    messages in assertion messages do not pickle); return what the function returns."""

    @functools.wraps(function)
    def run(*args: Any) -> Any:
        try:
            return function(*args)
        except BaseException:
            raise AssertionError(traceback.format_exc()) from None

    return run  # type: ignore[return-value]


# --- helpers ---------------------------------------------------------------------------------


def _expect_status(call: Callable[[], object], code: str, *named: str) -> str:
    """Run `call`, expecting status `code` and a message naming each of `named`."""
    try:
        call()
    except InferenceServerException as error:
        message = error.message() or ""
        assert error.status() == f"StatusCode.{code}", (error.status(), message)
        for part in named:
            assert part in message, f"{part!r} not in {message!r}"
        return message
    raise AssertionError(f"expected status {code}, the call succeeded")


@contextlib.contextmanager
def _shm_object(key: str, size: int) -> Iterator[shm.SharedMemoryRegion]:
    """A new shared-memory object of `size` bytes, all FILL, destroyed (unlinked) after."""
    handle = shm.create_shared_memory_region(key, key, size, create_only=True)
    try:
        shm.set_shared_memory_region(handle, [np.full(size, FILL, np.uint8)])
        yield handle
    finally:
        shm.destroy_shared_memory_region(handle)


@contextlib.contextmanager
def _registered(
    client: grpcclient.InferenceServerClient,
    name: str,
    key: str,
    size: int,
    offset: int = 0,
    headers: dict[str, str] | None = None,
) -> Iterator[None]:
    """Region `name` registered for the block; unregistered after (unknown names are OK)."""
    client.register_system_shared_memory(
        name, key, size, offset=offset, headers=headers, client_timeout=TIMEOUT_S
    )
    try:
        yield
    finally:
        client.unregister_system_shared_memory(name, headers=headers, client_timeout=TIMEOUT_S)


def _input(name: str, batch: int) -> grpcclient.InferInput:
    return grpcclient.InferInput(name, [batch, WIDTH], "FP32")


def _inline(name: str, value: np.ndarray) -> grpcclient.InferInput:
    tensor = _input(name, value.shape[0])
    tensor.set_data_from_numpy(value)
    return tensor


def _by_reference(
    name: str, batch: int, region: str, offset: int, byte_size: int | None = None
) -> grpcclient.InferInput:
    tensor = _input(name, batch)
    size = batch * ROW_BYTES if byte_size is None else byte_size
    tensor.set_shared_memory(region, size, offset=offset)
    return tensor


def _output(
    name: str, region: str | None = None, offset: int = 0, byte_size: int = 0
) -> grpcclient.InferRequestedOutput:
    output = grpcclient.InferRequestedOutput(name)
    if region is not None:
        output.set_shared_memory(region, byte_size, offset=offset)
    return output


class Slots:
    """Where one request's four tensors lie in a region: INPUT0, INPUT1, OUTPUT0, OUTPUT1
    one after the other from `offset` (in the region), each `batch` rows, then a guard row
    the server must not write. `base` is where the region starts in its object."""

    def __init__(self, offset: int, batch: int, base: int = 0) -> None:
        self.offset = offset
        self.batch = batch
        self.base = base
        self.nbytes = batch * ROW_BYTES

    def at(self, index: int) -> int:
        """Tensor `index`'s offset in the region."""
        return self.offset + index * self.nbytes

    @property
    def end(self) -> int:
        """Where the guard row starts."""
        return self.at(4)

    @property
    def guarded_end(self) -> int:
        """Where the next tensors may start."""
        return self.end + ROW_BYTES

    def write_inputs(self, handle: shm.SharedMemoryRegion, a: np.ndarray, b: np.ndarray) -> None:
        shm.set_shared_memory_region(handle, [a], offset=self.base + self.at(0))
        shm.set_shared_memory_region(handle, [b], offset=self.base + self.at(1))

    def clear_outputs(self, handle: shm.SharedMemoryRegion) -> None:
        """Fill the outputs and the guard row with FILL."""
        garbage = np.full(self.guarded_end - self.at(2), FILL, np.uint8)
        shm.set_shared_memory_region(handle, [garbage], offset=self.base + self.at(2))

    def output(self, handle: shm.SharedMemoryRegion, index: int) -> np.ndarray:
        at = self.base + self.at(2 + index)
        return np.array(
            shm.get_contents_as_numpy(handle, np.float32, [self.batch, WIDTH], offset=at)
        )

    def request(
        self, region: str
    ) -> tuple[list[grpcclient.InferInput], list[grpcclient.InferRequestedOutput]]:
        inputs = [
            _by_reference("INPUT0", self.batch, region, self.at(0)),
            _by_reference("INPUT1", self.batch, region, self.at(1)),
        ]
        outputs = [
            _output("OUTPUT0", region, self.at(2), self.nbytes),
            _output("OUTPUT1", region, self.at(3), self.nbytes),
        ]
        return inputs, outputs

    def check(
        self, handle: shm.SharedMemoryRegion, a: np.ndarray, b: np.ndarray, result: Any
    ) -> None:
        """Outputs in the region are a+b and a-b; the response describes them, carries no
        data for them, and the server wrote nothing past them."""
        np.testing.assert_array_equal(self.output(handle, 0), a + b)
        np.testing.assert_array_equal(self.output(handle, 1), a - b)
        _check_described(result, self.batch, placed=("OUTPUT0", "OUTPUT1"))
        after = self.base + self.end
        tail = np.array(shm.get_contents_as_numpy(handle, np.uint8, [ROW_BYTES], offset=after))
        assert (tail == FILL).all(), f"bytes after the outputs were written: {tail}"


def _check_described(result: Any, batch: int, placed: tuple[str, ...]) -> None:
    """Both outputs are in the response with FP32 [batch, WIDTH]; those in `placed` carry
    no data in the message (an empty raw entry, kept aligned with the outputs)."""
    response = result.get_response()
    names = [o.name for o in response.outputs]
    assert sorted(names) == ["OUTPUT0", "OUTPUT1"], names
    assert len(response.raw_output_contents) == len(names), len(response.raw_output_contents)
    for index, output in enumerate(response.outputs):
        assert output.datatype == "FP32", output.datatype
        assert list(output.shape) == [batch, WIDTH], list(output.shape)
        raw = response.raw_output_contents[index]
        if output.name in placed:
            assert raw == b"", f"{output.name} placed in shared memory came back inline too"
        else:
            assert len(raw) == batch * ROW_BYTES, (output.name, len(raw))


def _plain_infer(client: grpcclient.InferenceServerClient, seed: int = 1) -> None:
    """An ordinary inline request, answered correctly."""
    a, b = _operands(seed, 2)
    result = client.infer(
        MODEL, [_inline("INPUT0", a), _inline("INPUT1", b)], client_timeout=TIMEOUT_S
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def _system_regions(client: grpcclient.InferenceServerClient, **kwargs: Any) -> dict[str, Any]:
    status = client.get_system_shared_memory_status(client_timeout=TIMEOUT_S, **kwargs)
    return {name: status.regions[name] for name in status.regions}


# --- scenarios -------------------------------------------------------------------------------


@scenario
def check_inputs_and_outputs_by_reference(address: str, prefix: str) -> None:
    """Inputs and outputs in one region at several offsets and batch sizes; a region that
    starts inside its object; inline and by-reference tensors mixed in one request."""
    client = _client(address)
    key, region = f"/{prefix}-io", "io"
    size = 2 << 20
    with _shm_object(key, size) as handle, _registered(client, region, key, size):
        seed = 0
        # 0, one that splits an element (the server copies such inputs to align them), one
        # aligned to the element only, and one past the first MiB.
        for offset in (0, 2, 4, (1 << 20) + 4):
            for batch in (1, 3, 8):
                seed += 1
                shm.set_shared_memory_region(handle, [np.full(size, FILL, np.uint8)])
                slots = Slots(offset, batch)
                a, b = _operands(seed, batch)
                slots.write_inputs(handle, a, b)
                slots.clear_outputs(handle)
                inputs, outputs = slots.request(region)
                result = client.infer(MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
                slots.check(handle, a, b, result)
                head = np.array(shm.get_contents_as_numpy(handle, np.uint8, [offset], offset=0))
                assert (head == FILL).all(), f"bytes before offset {offset} were written"

        # A region registered from inside its object: tensor offsets count from its start.
        shifted, start = "io-shifted", 4096 + 100
        with _registered(client, shifted, key, 8192, offset=start):
            status = _system_regions(client, region_name=shifted)[shifted]
            assert (status.key, status.offset, status.byte_size) == (key, start, 8192), status
            slots = Slots(64, 2, base=start)
            a, b = _operands(50, 2)
            slots.write_inputs(handle, a, b)
            slots.clear_outputs(handle)
            inputs, outputs = slots.request(shifted)
            result = client.infer(MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
            slots.check(handle, a, b, result)

        # One output by reference (with room to spare), the other inline.
        slots = Slots(0, 3)
        a, b = _operands(60, 3)
        slots.write_inputs(handle, a, b)
        slots.clear_outputs(handle)
        inputs, _ = slots.request(region)
        outputs = [_output("OUTPUT0", region, slots.at(2), 2 * slots.nbytes), _output("OUTPUT1")]
        result = client.infer(MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
        np.testing.assert_array_equal(slots.output(handle, 0), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        _check_described(result, 3, placed=("OUTPUT0",))
        untouched = slots.output(handle, 1).view(np.uint8)
        assert (untouched == FILL).all(), "bytes past OUTPUT0's data were written"

        # One input by reference, the other inline; both outputs inline.
        a, b = _operands(70, 5)
        shm.set_shared_memory_region(handle, [a], offset=4096)
        inputs = [_by_reference("INPUT0", 5, region, 4096), _inline("INPUT1", b)]
        result = client.infer(MODEL, inputs, client_timeout=TIMEOUT_S)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        _check_described(result, 5, placed=())

        # The inline input first, the referenced one second (raw contents stay in order).
        inputs = [_inline("INPUT0", b), _by_reference("INPUT1", 5, region, 4096)]
        result = client.infer(MODEL, inputs, client_timeout=TIMEOUT_S)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), b + a)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), b - a)
    client.close()


@scenario
def check_concurrent_clients(address: str, prefix: str, clients: int, requests: int) -> None:
    """`clients` threads, each with its own client and its own slice of ONE region, send
    `requests` requests of distinct data each; every output is that request's own. Every
    other client takes its outputs inline, so batches mix both kinds."""
    key, region = f"/{prefix}-concurrent", "concurrent"
    stride = Slots(0, 1).guarded_end
    size = clients * stride
    errors: list[str] = []
    with _shm_object(key, size) as handle:
        admin = _client(address)
        with _registered(admin, region, key, size):

            def work(index: int) -> None:
                client = _client(address)
                try:
                    slots = Slots(index * stride, 1)
                    inputs, outputs = slots.request(region)
                    inline = index % 2 == 1
                    for i in range(requests):
                        a, b = _operands(1000 * index + i, 1)
                        slots.write_inputs(handle, a, b)
                        slots.clear_outputs(handle)
                        result = client.infer(
                            MODEL,
                            inputs,
                            outputs=None if inline else outputs,
                            client_timeout=TIMEOUT_S,
                        )
                        if inline:
                            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
                            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
                            _check_described(result, 1, placed=())
                        else:
                            slots.check(handle, a, b, result)
                except BaseException:
                    errors.append(f"client {index}:\n{traceback.format_exc()}")
                finally:
                    client.close()

            threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(4 * TIMEOUT_S)
            assert not any(t.is_alive() for t in threads), "a client did not finish"
        admin.close()
    assert not errors, "\n".join(errors)


@scenario
def model_counts(address: str) -> tuple[int, int]:
    """The model's (inference_count, execution_count)."""
    client = _client(address)
    stats = client.get_inference_statistics(MODEL, "1", client_timeout=TIMEOUT_S).model_stats[0]
    client.close()
    return int(stats.inference_count), int(stats.execution_count)


@scenario
def check_status_and_unregister(address: str, prefix: str) -> None:
    """Status of all and by name, unregister by name and all, re-registering a name."""
    client = _client(address)
    key1, key2 = f"/{prefix}-status1", f"/{prefix}-status2"
    with _shm_object(key1, 4096) as handle, _shm_object(key2, 1024):
        client.register_system_shared_memory("first", key1, 4096, client_timeout=TIMEOUT_S)
        client.register_system_shared_memory(
            "second", key2, 512, offset=256, client_timeout=TIMEOUT_S
        )
        regions = _system_regions(client)
        assert sorted(regions) == ["first", "second"], regions
        assert (regions["first"].key, regions["first"].offset) == (key1, 0), regions
        assert regions["first"].byte_size == 4096, regions
        second = regions["second"]
        assert (second.name, second.key, second.offset, second.byte_size) == (
            "second",
            key2,
            256,
            512,
        ), second
        assert sorted(_system_regions(client, region_name="second")) == ["second"]
        _expect_status(
            lambda: client.get_system_shared_memory_status(region_name="third"),
            "NOT_FOUND",
            "'third'",
        )
        # A system region is no CUDA region.
        cuda = client.get_cuda_shared_memory_status(client_timeout=TIMEOUT_S)
        assert len(cuda.regions) == 0, cuda

        slots = Slots(0, 2)

        def infer_first(seed: int) -> None:
            a, b = _operands(seed, 2)
            slots.write_inputs(handle, a, b)
            slots.clear_outputs(handle)
            inputs, outputs = slots.request("first")
            result = client.infer(MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
            slots.check(handle, a, b, result)

        infer_first(1)
        client.unregister_system_shared_memory("first", client_timeout=TIMEOUT_S)
        assert sorted(_system_regions(client)) == ["second"]
        _expect_status(
            lambda: client.get_system_shared_memory_status(region_name="first"), "NOT_FOUND"
        )
        inputs, outputs = slots.request("first")
        _expect_status(
            lambda: client.infer(MODEL, inputs, outputs=outputs),
            "NOT_FOUND",
            "INPUT0",
            "'first'",
        )
        # Unregistering a name nobody registered is no error, as in Triton.
        client.unregister_system_shared_memory("never-registered", client_timeout=TIMEOUT_S)
        client.unregister_system_shared_memory("first", client_timeout=TIMEOUT_S)

        # The name is free again.
        client.register_system_shared_memory("first", key1, 4096, client_timeout=TIMEOUT_S)
        assert sorted(_system_regions(client)) == ["first", "second"]
        infer_first(2)

        # An empty name unregisters every system region.
        client.unregister_system_shared_memory(client_timeout=TIMEOUT_S)
        assert _system_regions(client) == {}
        _expect_status(lambda: client.infer(MODEL, inputs, outputs=outputs), "NOT_FOUND", "'first'")
        client.unregister_system_shared_memory(client_timeout=TIMEOUT_S)
    client.close()


@scenario
def check_bad_requests(address: str, prefix: str) -> None:
    """Every refused registration and reference, with its status and what it names; the
    server serves on and keeps exactly the regions it should."""
    client = _client(address)
    key, region, size = f"/{prefix}-bad", "good", 4096
    link = f"{prefix}-link"
    with _shm_object(key, size) as handle, _registered(client, region, key, size):
        a, b = _operands(5, 1)
        shm.set_shared_memory_region(handle, [a, b])
        good = [_by_reference("INPUT0", 1, region, 0), _by_reference("INPUT1", 1, region, 64)]

        # References to regions nobody registered name the tensor and the region.
        unknown = [_by_reference("INPUT0", 1, "nowhere", 0), good[1]]
        _expect_status(lambda: client.infer(MODEL, unknown), "NOT_FOUND", "INPUT0", "'nowhere'")
        outputs = [_output("OUTPUT0", "elsewhere", 0, 64)]
        _expect_status(
            lambda: client.infer(MODEL, good, outputs=outputs),
            "NOT_FOUND",
            "OUTPUT0",
            "'elsewhere'",
        )

        # Registrations refused.
        missing = f"/{prefix}-missing"
        _expect_status(
            lambda: client.register_system_shared_memory("r", missing, 64),
            "NOT_FOUND",
            "'r'",
            missing,
        )
        for path in ("/../etc/passwd", "a/b", "/", ".."):
            _expect_status(
                functools.partial(client.register_system_shared_memory, "r", path, 64),
                "INVALID_ARGUMENT",
                repr(path),
            )
        os.symlink(f"{OBJECT_DIR}{key}", f"{OBJECT_DIR}/{link}")
        try:
            _expect_status(
                lambda: client.register_system_shared_memory("r", f"/{link}", 64),
                "INVALID_ARGUMENT",
                link,
            )
        finally:
            os.unlink(f"{OBJECT_DIR}/{link}")
        _expect_status(
            lambda: client.register_system_shared_memory(region, key, 64),
            "INVALID_ARGUMENT",
            f"'{region}'",
            "already registered",
        )
        _expect_status(
            lambda: client.register_system_shared_memory("r", key, 4000, offset=100),
            "INVALID_ARGUMENT",
            f"is {size} bytes",
            "100 + 4000 = 4100",
        )
        _expect_status(
            lambda: client.register_system_shared_memory("r", key, 0),
            "INVALID_ARGUMENT",
            "byte_size",
        )
        _expect_status(
            lambda: client.register_system_shared_memory("", key, 64), "INVALID_ARGUMENT", "name"
        )

        # References that do not fit.
        short = [_by_reference("INPUT0", 1, region, 0, byte_size=60), good[1]]
        _expect_status(
            lambda: client.infer(MODEL, short),
            "INVALID_ARGUMENT",
            "INPUT0",
            "expected 64 bytes",
            "received 60",
        )
        past = [good[0], _by_reference("INPUT1", 1, region, size - 32)]
        _expect_status(
            lambda: client.infer(MODEL, past),
            "INVALID_ARGUMENT",
            "INPUT1",
            f"'{region}' holds {size} bytes",
            f"{size - 32} + byte size 64 = {size + 32}",
        )
        outputs = [_output("OUTPUT0", region, 2048, 64), _output("OUTPUT1", region, size - 16, 64)]
        _expect_status(
            lambda: client.infer(MODEL, good, outputs=outputs),
            "INVALID_ARGUMENT",
            "OUTPUT1",
            f"holds {size} bytes",
        )
        outputs = [_output("OUTPUT0", region, 2048, 32)]
        _expect_status(
            lambda: client.infer(MODEL, good, outputs=outputs),
            "INVALID_ARGUMENT",
            "OUTPUT0",
            f"'{region}'",
            "room for 32 bytes",
            "needs 64",
        )

        # CUDA shared memory on a server without a GPU.
        _expect_status(
            lambda: client.register_cuda_shared_memory("gpu", b"\x00" * 64, 0, 64),
            "FAILED_PRECONDITION",
            "'gpu'",
            "no GPU",
        )
        # The missing GPU is what the server reports first, whatever the handle.
        _expect_status(
            lambda: client.register_cuda_shared_memory("gpu", b"\x00" * 63, 0, 64),
            "FAILED_PRECONDITION",
            "no GPU",
        )
        _expect_status(
            lambda: client.unregister_cuda_shared_memory(region),
            "INVALID_ARGUMENT",
            f"'{region}'",
            "system shared-memory region",
        )
        assert len(client.get_cuda_shared_memory_status().regions) == 0

        # None of it left a trace: the server answers, lists only the good region, and the
        # good region still works.
        assert client.is_server_live(client_timeout=TIMEOUT_S)
        _plain_infer(client)
        assert sorted(_system_regions(client)) == [region]
        slots = Slots(0, 1)
        slots.clear_outputs(handle)
        inputs, outputs = slots.request(region)
        result = client.infer(MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
        slots.check(handle, a, b, result)
    assert _system_regions(client) == {}
    client.close()


@scenario
def check_shrunk_object(address: str, prefix: str) -> None:
    """A client that shrinks its object after registering it gets INVALID_ARGUMENT (not a
    crashed server: reading the lost pages would raise SIGBUS)."""
    client = _client(address)
    key, region, size = f"/{prefix}-shrink", "shrinking", 8192
    with _shm_object(key, size) as handle, _registered(client, region, key, size):
        slots = Slots(4096, 2)
        a, b = _operands(9, 2)
        slots.write_inputs(handle, a, b)
        inputs, outputs = slots.request(region)
        result = client.infer(MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
        slots.check(handle, a, b, result)

        fd = os.open(f"{OBJECT_DIR}{key}", os.O_RDWR)
        try:
            os.ftruncate(fd, 1024)
        finally:
            os.close(fd)
        # From here on this process must not touch its own mapping past 1024 bytes either.
        _expect_status(
            lambda: client.infer(MODEL, inputs, outputs=outputs),
            "INVALID_ARGUMENT",
            "INPUT0",
            f"'{region}'",
            "shrank to 1024 bytes",
            str(size),
        )
        # An output alone in the lost pages is refused the same way.
        _expect_status(
            lambda: client.infer(
                MODEL,
                [_inline("INPUT0", a), _inline("INPUT1", b)],
                outputs=[_output("OUTPUT0", region, 0, slots.nbytes)],
            ),
            "INVALID_ARGUMENT",
            "OUTPUT0",
            "shrank",
        )
        assert client.is_server_live(client_timeout=TIMEOUT_S)
        _plain_infer(client)
    assert _system_regions(client) == {}
    client.close()


@scenario
def check_limits(address: str, prefix: str, max_regions: int, max_bytes: int) -> None:
    """A server allowing `max_regions` regions (2) of `max_bytes` in all (1 MiB)."""
    assert max_regions == 2, "the scenario registers two regions"
    client = _client(address)
    key = f"/{prefix}-limits"
    with _shm_object(key, max_bytes + 4096) as handle:
        client.register_system_shared_memory("first", key, 4096, client_timeout=TIMEOUT_S)
        # Failed registrations hold no place against the limits.
        for _ in range(3):
            _expect_status(
                lambda: client.register_system_shared_memory("lost", f"/{prefix}-none", 64),
                "NOT_FOUND",
            )
        _expect_status(
            lambda: client.register_system_shared_memory("big", key, max_bytes + 64),
            "RESOURCE_EXHAUSTED",
            "'big'",
            str(max_bytes),
        )
        rest = max_bytes - 4096
        _expect_status(
            lambda: client.register_system_shared_memory("second", key, rest + 1, offset=4096),
            "RESOURCE_EXHAUSTED",
            str(max_bytes + 1),
            str(max_bytes),
        )
        # Exactly at the byte limit is allowed.
        client.register_system_shared_memory(
            "second", key, rest, offset=4096, client_timeout=TIMEOUT_S
        )
        _expect_status(
            lambda: client.register_system_shared_memory("third", key, 64),
            "RESOURCE_EXHAUSTED",
            "'third'",
            f"{max_regions} regions",
        )
        assert sorted(_system_regions(client)) == ["first", "second"]

        # A region at the limit works, up to its last byte.
        slots = Slots(rest - Slots(0, 8).guarded_end, 8, base=4096)
        a, b = _operands(3, 8)
        slots.write_inputs(handle, a, b)
        inputs, outputs = slots.request("second")
        result = client.infer(MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
        slots.check(handle, a, b, result)

        client.unregister_system_shared_memory("second", client_timeout=TIMEOUT_S)
        client.register_system_shared_memory("third", key, 64, client_timeout=TIMEOUT_S)
        assert sorted(_system_regions(client)) == ["first", "third"]
        client.unregister_system_shared_memory(client_timeout=TIMEOUT_S)
        client.register_system_shared_memory("big", key, max_bytes, client_timeout=TIMEOUT_S)
        client.unregister_system_shared_memory(client_timeout=TIMEOUT_S)
    client.close()


@scenario
def server_extensions(address: str) -> list[str]:
    """ServerMetadata's extensions."""
    client = _client(address)
    extensions = list(client.get_server_metadata(client_timeout=TIMEOUT_S).extensions)
    client.close()
    return extensions


# Objects held between calls (the metrics test scrapes while they are registered).
_HELD: dict[str, shm.SharedMemoryRegion] = {}


@scenario
def hold_region(address: str, key: str, name: str, size: int) -> None:
    """Create object `key` and register all of it as region `name` until release_region."""
    handle = shm.create_shared_memory_region(key, key, size, create_only=True)
    _HELD[name] = handle
    client = _client(address)
    client.register_system_shared_memory(name, key, size, client_timeout=TIMEOUT_S)
    client.close()


@scenario
def release_region(address: str, name: str) -> None:
    """Unregister region `name` and destroy its object (what hold_region made)."""
    client = _client(address)
    try:
        client.unregister_system_shared_memory(name, client_timeout=TIMEOUT_S)
    finally:
        client.close()
        handle = _HELD.pop(name, None)
        if handle is not None:
            shm.destroy_shared_memory_region(handle)


@scenario
def infer_on_held(address: str, name: str, batch: int, inline_second: bool) -> None:
    """One request through held region `name`: everything by reference, or INPUT1 and
    OUTPUT1 inline when `inline_second`."""
    handle = _HELD[name]
    client = _client(address)
    slots = Slots(0, batch)
    a, b = _operands(batch, batch)
    slots.write_inputs(handle, a, b)
    inputs, outputs = slots.request(name)
    if inline_second:
        inputs[1] = _inline("INPUT1", b)
        outputs[1] = _output("OUTPUT1")
    result = client.infer(MODEL, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
    np.testing.assert_array_equal(slots.output(handle, 0), a + b)
    if inline_second:
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    else:
        np.testing.assert_array_equal(slots.output(handle, 1), a - b)
    client.close()


@scenario
def check_stream(address: str, prefix: str) -> None:
    """ModelStreamInfer with inputs and outputs in shared memory; an unknown region is an
    error on the stream, which goes on."""
    client = _client(address)
    key, region = f"/{prefix}-stream", "stream"
    batches = [1, 2, 3, 4, 5, 6, 7, 8]
    layout: dict[str, tuple[Slots, np.ndarray, np.ndarray]] = {}
    offset = 0
    for index, batch in enumerate(batches):
        slots = Slots(offset, batch)
        layout[f"stream-{index}"] = (slots, *_operands(200 + index, batch))
        offset = slots.guarded_end + 4
    size = offset
    done: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with _shm_object(key, size) as handle, _registered(client, region, key, size):
        client.start_stream(callback=lambda result, error: done.put((result, error)))
        try:
            for request_id, (slots, a, b) in layout.items():
                slots.write_inputs(handle, a, b)
                inputs, outputs = slots.request(region)
                client.async_stream_infer(MODEL, inputs, outputs=outputs, request_id=request_id)
                if request_id == "stream-3":
                    bad = [_by_reference("INPUT0", 1, "gone", 0), inputs[1]]
                    client.async_stream_infer(MODEL, bad, request_id="bad")
            results: dict[str, Any] = {}
            errors = []
            for _ in range(len(layout) + 1):
                result, error = done.get(timeout=TIMEOUT_S)
                if error is not None:
                    errors.append(error)
                else:
                    results[result.get_response().id] = result
        finally:
            client.stop_stream()
        assert sorted(results) == sorted(layout), sorted(results)
        for request_id, (slots, a, b) in layout.items():
            slots.check(handle, a, b, results[request_id])
        assert len(errors) == 1, errors
        message = errors[0].message()
        assert "'gone'" in message and "INPUT0" in message, message
    client.close()


@scenario
def check_auth(address: str, prefix: str, infer_token: str) -> None:
    """With tokens: shared-memory calls without a token are UNAUTHENTICATED; an infer token
    registers, reads status, infers by reference and unregisters."""
    client = _client(address)
    headers = {"authorization": f"Bearer {infer_token}"}
    wrong = {"authorization": "Bearer not-a-token-of-this-server"}
    key, region, size = f"/{prefix}-auth", "authorized", 4096
    with _shm_object(key, size) as handle:
        _expect_status(
            lambda: client.register_system_shared_memory(region, key, size), "UNAUTHENTICATED"
        )
        _expect_status(
            lambda: client.register_system_shared_memory(region, key, size, headers=wrong),
            "UNAUTHENTICATED",
        )
        _expect_status(lambda: client.get_system_shared_memory_status(), "UNAUTHENTICATED")
        _expect_status(lambda: client.unregister_system_shared_memory(), "UNAUTHENTICATED")
        _expect_status(
            lambda: client.register_cuda_shared_memory("gpu", b"\x00" * 64, 0, 64),
            "UNAUTHENTICATED",
        )
        status = client.get_system_shared_memory_status(headers=headers)
        assert len(status.regions) == 0, status
        with _registered(client, region, key, size, headers=headers):
            assert sorted(_system_regions(client, headers=headers)) == [region]
            slots = Slots(0, 4)
            a, b = _operands(77, 4)
            slots.write_inputs(handle, a, b)
            slots.clear_outputs(handle)
            inputs, outputs = slots.request(region)
            _expect_status(lambda: client.infer(MODEL, inputs, outputs=outputs), "UNAUTHENTICATED")
            result = client.infer(
                MODEL, inputs, outputs=outputs, headers=headers, client_timeout=TIMEOUT_S
            )
            slots.check(handle, a, b, result)
        assert _system_regions(client, headers=headers) == {}
    client.close()
