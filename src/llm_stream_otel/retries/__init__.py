"""Attributing attempts: SDK retries, application retries (fingerprint + scope), the fix rate, and the resilient helper."""
