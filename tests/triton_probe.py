"""Drive our server with tritonclient[grpc] (run from its own virtualenv: it needs protobuf < 7).

    python triton_probe.py HOST:PORT MODEL IMAGES.npy OUT.json

Prints nothing; writes what the server answered as JSON for tests/test_clients_triton.py.
"""

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> int:
    url, model, images_path, out_path = sys.argv[1:5]
    images = np.load(images_path)  # uint8 [N, 784]
    c = grpcclient.InferenceServerClient(url=url)
    out = {
        "live": c.is_server_live(),
        "ready": c.is_server_ready(),
        "model_ready": c.is_model_ready(model),
    }
    smd = c.get_server_metadata()
    out["server"] = {"name": smd.name, "version": smd.version, "extensions": list(smd.extensions)}
    md = c.get_model_metadata(model, as_json=True)
    out["metadata"] = md

    # FP32 in [0, 1], raw (binary) input contents: what set_data_from_numpy sends
    x = images.astype(np.float32) / np.float32(255.0)
    inp = grpcclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outs = [grpcclient.InferRequestedOutput("scores"), grpcclient.InferRequestedOutput("label")]
    r = c.infer(model, [inp], outputs=outs, request_id="fp32")
    out["fp32"] = {
        "label": r.as_numpy("label").tolist(),
        "scores": r.as_numpy("scores").tolist(),
        "id": r.get_response().id,
    }
    out["fp32"]["sjff_version"] = r.get_response(as_json=True).get("parameters", {}).get("sjff_version", {})

    # UINT8 0..255, all outputs
    inp8 = grpcclient.InferInput("images", list(images.shape), "UINT8")
    inp8.set_data_from_numpy(images)
    r8 = c.infer(model, [inp8])
    out["uint8"] = {
        "label": r8.as_numpy("label").tolist(),
        "outputs": sorted(o.name for o in r8.get_response().outputs),
    }

    # classification extension: top-3 of the scores
    rc = c.infer(model, [inp8], outputs=[grpcclient.InferRequestedOutput("scores", class_count=3)])
    out["classification"] = [[b.decode() for b in row] for row in rc.as_numpy("scores")]

    # errors
    try:
        c.infer("no-such-model", [inp8])
        out["unknown_model"] = "no error"
    except grpcclient.InferenceServerException as exc:
        out["unknown_model"] = exc.status()
    bad = grpcclient.InferInput("images", [1, 10], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 10), np.float32))
    try:
        c.infer(model, [bad])
        out["bad_shape"] = "no error"
    except grpcclient.InferenceServerException as exc:
        out["bad_shape"] = exc.status()

    # streaming (ModelStreamInfer), as Triton's decoupled/sequence clients use it
    results: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    for i in range(len(images)):
        one = grpcclient.InferInput("images", [1, images.shape[1]], "UINT8")
        one.set_data_from_numpy(images[i : i + 1])
        c.async_stream_infer(model, [one], request_id=str(i))
    c.stop_stream()
    stream = {}
    while not results.empty():
        result, error = results.get()
        if error is not None:
            stream["error"] = str(error)
        else:
            stream[result.get_response().id] = int(result.as_numpy("label")[0])
    out["stream"] = stream
    c.close()
    with open(out_path, "w") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
