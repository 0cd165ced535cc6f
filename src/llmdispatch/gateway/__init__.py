"""The OpenAI-compatible gateway that serves trained policies live.

Modules, one job each: :mod:`.config` (the YAML file), :mod:`.app` (ASGI routes),
:mod:`.pipeline` (allowed models, the policy's live flow, calls, fallbacks, accounting),
:mod:`.streaming` (server-sent events), :mod:`.providers` (upstream HTTP calls with retries),
:mod:`.openai_format` (requests to queries, answers to policy results), :mod:`.errors`,
:mod:`.policy_loader`, :mod:`.openapi`, :mod:`.replay_server` (an outcome table as an
upstream), :mod:`.demo`; shared state, keys, the request log and metrics in :mod:`.state`,
:mod:`.auth`, :mod:`.requestlog` and :mod:`.metrics`. Nothing is imported here, so the
package costs nothing until a module is used.
"""
