"""The KServe v2 / Open Inference Protocol on the wire: requests in, responses out.

Pure data handling, no HTTP framework: an infer request body (JSON, or JSON
followed by raw tensors as Triton's binary tensor data extension sends them) is
turned into checked numpy feeds, and outputs back into a response body.  Every
mistake in a request is an :class:`HTTPError` with a 4xx status whose message
names the tensor, so the server answers ``{"error": "..."}`` and never a 500.

Binary extension, as tritonclient and perf_analyzer speak it: the header
``Inference-Header-Content-Length: N`` says the first N bytes are the JSON
header; each input whose ``parameters.binary_data_size`` is set takes that many
bytes from what follows, in the order the inputs are listed.  Outputs asked for
with ``parameters.binary_data: true`` (or all, with the request parameter
``binary_data_output: true``) are sent the same way.
"""

import json

import numpy as np

# KServe v2 datatype <-> numpy dtype.  BYTES (strings) and BF16 have no numpy
# equivalent edgeinfer models use; a request naming them is refused per tensor.
DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
NUMPY_TO_DATATYPE = dict((v, k) for k, v in DATATYPES.items())

HEADER_LENGTH = "inference-header-content-length"


class HTTPError(Exception):
    """A request the server refuses, with the HTTP status to answer.

    Args:
        status: the HTTP status code, e.g. 400.
        message: what was wrong, naming the thing; sent as ``{"error": message}``.
        headers: extra response headers, e.g. ``{"Retry-After": "1"}`` (default None).
    """

    def __init__(self, status, message, headers=None):
        super(HTTPError, self).__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad(message):
    """A 400 Bad Request."""
    return HTTPError(400, message)


def datatype_of(dtype):
    """The v2 datatype name of a numpy dtype name (``"float32"`` -> ``"FP32"``)."""
    return NUMPY_TO_DATATYPE.get(str(dtype), "BYTES")


def wire_shape(shape):
    """A spec's shape as the protocol writes it: symbolic dims are -1."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


class InferRequest(object):
    """One parsed infer request.

    Attributes:
        id: the client's request id, echoed back (or None).
        feeds: dict input name -> numpy array, checked against the model.
        outputs: output names to return, in order.
        binary: set of output names to send as binary data.
        rows: the batch size (the inputs' first dim) for batchable models, else 1.
    """

    __slots__ = ("id", "feeds", "outputs", "binary", "rows")

    def __init__(self, id, feeds, outputs, binary, rows):
        self.id = id
        self.feeds = feeds
        self.outputs = outputs
        self.binary = binary
        self.rows = rows


def split_body(body, header_length):
    """``(JSON header, binary tail)`` of a request body, without copying the tail.

    Args:
        body: the whole request body (bytes or bytearray).
        header_length: the Inference-Header-Content-Length header's text, or None.

    Returns:
        The header as bytes-like (``json.loads`` reads it) and the tail as a
        memoryview of ``body`` (empty when there is no binary part).

    Raises:
        HTTPError: 400 when the header is not a whole number within the body.
    """
    if header_length is None:
        return body, memoryview(b"")
    try:
        size = int(header_length)
    except ValueError:
        size = -1
    if size < 0 or size > len(body):
        raise bad("Inference-Header-Content-Length is {!r}, but the body has {} bytes. "
                  "Note: it gives the size of the JSON part at the start of the body.".format(
                      header_length, len(body)))
    view = memoryview(body)
    return bytes(view[:size]), view[size:]


def parse_json(data):
    """The JSON object in ``data`` (bytes); 400 when it is not one."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad("The request body is not valid JSON: {}.".format(exc))
    except RecursionError:
        raise bad("The request body is not valid JSON: nested too deeply.")
    if not isinstance(value, dict):
        raise bad("The request body must be a JSON object, not {}.".format(
            type(value).__name__))
    return value


def _field(obj, key, kind, what, default=None):
    value = obj.get(key, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad("{}: '{}' must be {}, not {}.".format(what, key, _kind_name(kind),
                                                        json.dumps(value)[:60]))
    return value


def _kind_name(kind):
    return {dict: "an object", list: "a list", str: "a string", int: "a whole number",
            bool: "true or false"}.get(kind, str(kind))


def parse_infer(header, tail, model):
    """Turn an infer request into checked feeds.

    Args:
        header: the request's JSON object (dict).
        tail: the binary tensor bytes after the JSON header, bytes-like (empty for
            none); binary inputs are numpy views of it, not copies.
        model: the :class:`~edgeinfer.serve.repository.ServedModel` it is for.

    Returns:
        InferRequest

    Raises:
        HTTPError: 400 naming the tensor for any mistake: unknown or missing
            inputs, a datatype other than the model's, a shape that does not fit,
            data whose length does not match the shape, binary sizes that
            disagree with the body.
    """
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad("'id' must be a string.")
    params = _field(header, "parameters", dict, "Request", {}) or {}
    inputs = _field(header, "inputs", list, "Request")
    if inputs is None:
        raise bad("The request has no 'inputs' list. Note: expected inputs: {}.".format(
            model.describe_inputs()))
    feeds, offset = {}, 0
    for index, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise bad("inputs[{}] must be an object with name, shape, datatype and data.".format(
                index))
        name = _field(item, "name", str, "inputs[{}]".format(index))
        if name is None:
            raise bad("inputs[{}] has no 'name'.".format(index))
        spec = model.input_specs.get(name)
        if spec is None:
            raise bad("Input tensor: {} | The model {!r} has no such input. Note: expected "
                      "inputs: {}.".format(name, model.name, model.describe_inputs()))
        if name in feeds:
            raise bad("Input tensor: {} | Given twice.".format(name))
        array, offset = _read_tensor(item, spec, tail, offset)
        feeds[name] = array
    missing = [n for n in model.input_specs if n not in feeds]
    if missing:
        raise bad("Input tensor: {} | Missing. Note: expected inputs: {}.".format(
            ", ".join(missing), model.describe_inputs()))
    if offset != len(tail):
        raise bad("The body has {} bytes of binary data after the JSON header, but the inputs' "
                  "binary_data_size add up to {}.".format(len(tail), offset))
    rows = _check_rows(feeds, model)
    outputs, binary = _requested_outputs(header, params, model)
    return InferRequest(request_id, feeds, outputs, binary, rows)


def _read_tensor(item, spec, tail, offset):
    """``(array, new offset into tail)`` for one request input."""
    what = "Input tensor: {}".format(spec.name)
    datatype = _field(item, "datatype", str, what)
    expected = datatype_of(spec.dtype)
    if datatype != expected:
        raise bad("{} | Received datatype {}. Note: expected datatype {}.".format(
            what, json.dumps(datatype), expected))
    shape = _field(item, "shape", list, what)
    if shape is None or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                for d in shape):
        raise bad("{} | 'shape' must be a list of whole numbers >= 0, not {}.".format(
            what, json.dumps(shape)[:60]))
    _check_shape(spec, shape)
    count = 1
    for dim in shape:
        count *= dim
    dtype = np.dtype(spec.dtype)
    params = _field(item, "parameters", dict, what, {}) or {}
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad("{} | binary_data_size must be a whole number >= 0.".format(what))
        if "data" in item:
            raise bad("{} | Has both 'data' and binary_data_size; give one.".format(what))
        if size != count * dtype.itemsize:
            raise bad("{} | binary_data_size is {} bytes, but shape {} of {} needs {}.".format(
                what, size, shape, datatype, count * dtype.itemsize))
        if offset + size > len(tail):
            raise bad("{} | binary_data_size says {} bytes, but only {} remain in the "
                      "body.".format(what, size, len(tail) - offset))
        array = np.frombuffer(tail, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
        return array.astype(dtype, copy=False).reshape(shape), offset + size
    if "data" not in item:
        raise bad("{} | Has neither 'data' nor parameters.binary_data_size.".format(what))
    return _from_json_data(item["data"], dtype, shape, count, what), offset


def _from_json_data(data, dtype, shape, count, what):
    if not isinstance(data, list):
        raise bad("{} | 'data' must be a list of numbers.".format(what))
    try:
        # Nested lists in row-major order are as valid as a flat list (the protocol
        # allows both); np.asarray flattens either, and refuses ragged nesting.
        flat = np.asarray(data)
    except (ValueError, TypeError):
        raise bad("{} | 'data' is ragged: nested lists of different lengths.".format(what))
    kind = flat.dtype.kind
    if flat.size and not (kind in "iu" and dtype.kind in "iuf" or kind == "f" and dtype.kind == "f"
                          or kind == "b" and dtype.kind == "b"):
        raise bad("{} | 'data' holds {} values, which do not fit datatype {}.".format(
            what, _kind_text(kind), datatype_of(dtype)))
    if flat.size != count:
        raise bad("{} | 'data' has {} values, but shape {} needs {}.".format(
            what, flat.size, shape, count))
    if dtype.kind in "iu" and flat.size:
        info = np.iinfo(dtype)
        if flat.min() < info.min or flat.max() > info.max:
            raise bad("{} | 'data' has values outside the range of {}.".format(
                what, datatype_of(dtype)))
    with np.errstate(over="ignore"):
        return flat.astype(dtype).reshape(shape)


def _kind_text(kind):
    return {"b": "true/false", "i": "integer", "u": "integer", "f": "floating-point",
            "U": "string", "O": "mixed"}.get(kind, "other")


def _check_shape(spec, shape):
    if len(shape) != len(spec.shape):
        raise bad("Input tensor: {} | Received shape {}: rank {}. Note: expected {}.".format(
            spec.name, shape, len(shape), _describe(spec)))
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if isinstance(want, int) and want > 0 and want != got:
            raise bad("Input tensor: {} | Received shape {}; dim {} is {}. Note: expected "
                      "{}.".format(spec.name, shape, axis, got, _describe(spec)))


def _describe(spec):
    return "{} {}".format(datatype_of(spec.dtype), wire_shape(spec.shape))


def _check_rows(feeds, model):
    """The batch size, checking every input agrees on it and on shared dim names."""
    first = {}
    for spec in model.inputs:
        shape = feeds[spec.name].shape
        for axis, dim in enumerate(spec.shape):
            if not isinstance(dim, str):
                continue
            if dim in first and first[dim][1] != shape[axis]:
                other, size = first[dim]
                raise bad("Input tensor: {} | Dim {} ({}) is {}, but {} has {} = {}. Note: "
                          "inputs sharing a dim name agree on its size.".format(
                              spec.name, axis, dim, shape[axis], other, dim, size))
            first.setdefault(dim, (spec.name, shape[axis]))
    if not model.batchable:
        return 1
    rows = feeds[model.inputs[0].name].shape[0]
    for spec in model.inputs[1:]:
        if feeds[spec.name].shape[0] != rows:
            raise bad("Input tensor: {} | Batch dim is {}, but {} has {}. Note: all inputs "
                      "carry the same batch.".format(spec.name, feeds[spec.name].shape[0],
                                                     model.inputs[0].name, rows))
    if rows == 0:
        raise bad("Input tensor: {} | Batch dim is 0; send at least one row.".format(
            model.inputs[0].name))
    return rows


def _requested_outputs(header, params, model):
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise bad("parameters.binary_data_output must be true or false.")
    asked = _field(header, "outputs", list, "Request")
    if not asked:
        names = list(model.output_names)
        return names, set(names) if binary_default else set()
    names, binary = [], set()
    for index, item in enumerate(asked):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise bad("outputs[{}] must be an object with a 'name'.".format(index))
        name = item["name"]
        if name not in model.output_names:
            raise bad("Output tensor: {} | The model {!r} has no such output. Note: outputs: "
                      "{}.".format(name, model.name, ", ".join(model.output_names)))
        oparams = _field(item, "parameters", dict, "Output tensor: " + name, {}) or {}
        if oparams.get("classification"):
            raise bad("Output tensor: {} | The classification extension is not supported; "
                      "use POST /v2/models/{}/classify.".format(name, model.name))
        flag = oparams.get("binary_data", binary_default)
        if not isinstance(flag, bool):
            raise bad("Output tensor: {} | parameters.binary_data must be true or "
                      "false.".format(name))
        if name not in names:
            names.append(name)
        if flag:
            binary.add(name)
    return names, binary


def encode_infer(model, request, outputs):
    """The response body for ``outputs``.

    Args:
        model: the ServedModel that ran.
        request: the InferRequest answered.
        outputs: dict output name -> numpy array.

    Returns:
        ``(body bytes, JSON header length or None)``: the length is set when some
        output travels as binary data, for the Inference-Header-Content-Length header.
    """
    described, blobs = [], []
    for name in request.outputs:
        value = np.asarray(outputs[name])
        entry = {"name": name, "datatype": datatype_of(value.dtype), "shape": list(value.shape)}
        if name in request.binary:
            blob = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"),
                                                      copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.ravel().tolist()
        described.append(entry)
    body = {"model_name": model.name, "model_version": model.version, "outputs": described}
    if request.id is not None:
        body["id"] = request.id
    header = json.dumps(body, separators=(",", ":"), allow_nan=True).encode()
    if not blobs:
        return header, None
    return b"".join([header] + blobs), len(header)
