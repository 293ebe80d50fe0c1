"""Serve's own cost on this machine: the served app's shape with models that do no work.

``bench serve`` measures the ensemble over HTTP against the same files in-process; the difference is what
HTTP, the ingress and the handle calls cost. This app isolates that cost: the same path (a FastAPI
ingress that reads the image body, then one handle call per member through ``@serve.batch``, answers
JSON), but each member answers at once with zeros, and the ingress does not decode. Whatever latency and
throughput it shows is the floor any composition of one deployment per model can reach here.
"""

# No ``from __future__ import annotations``: FastAPI reads the route's ``Request`` annotation as a type
# through Serve's ingress wrapper, and a string there makes it a query parameter (every call a 422).
import asyncio

import numpy as np
from fastapi import FastAPI, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

# The (k, S, S, 3) uint8 stack each member receives from the real ingress, at a typical model size.
STACK = np.zeros((1, 64, 64, 3), dtype=np.uint8)

floor_api = FastAPI(title="raymotion serve floor")


@serve.deployment
class NoWorkModel:
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def predict(self, stacks: list[np.ndarray]) -> list[np.ndarray]:
        return [np.zeros((len(s), 3), dtype=np.float32) for s in stacks]

    async def ready(self) -> str:
        return "ok"


@serve.deployment
@serve.ingress(floor_api)
class FloorIngress:
    def __init__(self, *members: DeploymentHandle):
        self.members = members

    @floor_api.post("/predict")
    async def predict(self, request: Request):
        await request.body()
        results = await asyncio.gather(*(m.predict.remote(STACK) for m in self.members))
        return {"label": "none", "probabilities": [float(r.sum()) for r in results]}

    @floor_api.get("/healthz")
    async def healthz(self):
        await asyncio.gather(*(m.ready.remote() for m in self.members))
        return {"status": "ok"}


def build_floor_app(members: int, member_cpus: float, ingress_cpus: float, max_ongoing_requests: int):
    """``members`` no-work deployments (0: the ingress alone, HTTP's own floor) behind the ingress."""
    handles = [NoWorkModel.options(name=f"nowork_{i}", ray_actor_options={"num_cpus": member_cpus},
                                   max_ongoing_requests=max_ongoing_requests).bind() for i in range(members)]
    return FloorIngress.options(ray_actor_options={"num_cpus": ingress_cpus},
                                max_ongoing_requests=max_ongoing_requests).bind(*handles)
