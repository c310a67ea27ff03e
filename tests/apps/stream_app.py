"""A plain app with no OpenTelemetry code: it streams one cut and one good answer."""

import os

import openai

client = openai.OpenAI(base_url=os.environ["APP_BASE_URL"], api_key="sk-app-SECRET", max_retries=0)
for fault in ("reset_between;after=2", "none"):
    try:
        for chunk in client.chat.completions.create(
            model="gpt-app",
            messages=[{"role": "user", "content": "hello from the app"}],
            stream=True,
            extra_headers={"X-Fault": fault},
        ):
            pass
        print("APP: stream ok")
    except openai.APIConnectionError as exc:
        print("APP: stream cut:", type(exc).__name__)
    except Exception as exc:  # openai 1.x lets httpx errors through
        print("APP: stream cut:", type(exc).__name__)
