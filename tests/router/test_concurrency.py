"""64 concurrent HTTP requests (streamed and not) all complete with the engine's own outputs."""

from __future__ import annotations

import asyncio

import openai

from engine.sampling_params import SamplingParams

PARAMS = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


async def complete(client: openai.AsyncOpenAI, model: str, prompt: list[int], stream: bool) -> tuple[str, int]:
    kwargs = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0, "extra_body": {"ignore_eos": True}}
    if not stream:
        reply = await client.completions.create(**kwargs)
        return reply.choices[0].text, reply.usage.completion_tokens
    chunks = [c async for c in await client.completions.create(stream=True, **kwargs)]
    return "".join(c.choices[0].text for c in chunks), len(chunks)


def test_64_concurrent_requests(router, reference):
    prompts = [[0, 7 + i, 19, 300 - 3 * i, 41 + i] for i in range(64)]
    expected = [(r.text, 8) for r in reference(prompts, PARAMS)]
    model = router.router.model_name

    async def main() -> list[tuple[str, int]]:
        async with openai.AsyncOpenAI(base_url=f"{router.base_url}/v1", api_key="unused", max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*(complete(client, model, p, i % 2 == 1) for i, p in enumerate(prompts)))
    assert asyncio.run(main()) == expected
    assert router.wait_until_idle().num_blocks_used == 0
