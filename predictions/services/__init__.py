"""How a prediction is made: the business logic that views, tasks and commands share, one module per concern.

- ``submission``: a text or a batch becomes rows (answered from the cache, or queued);
- ``backpressure``: MAX_QUEUED, the refusal of a submission that would overfill the queue;
- ``dispatch``: run tasks published after commit, and the wake-up coalescing of single texts;
- ``worker``: the claim, the forward pass, the result write, and the sweep of lost work;
- ``sql``: the three statements the ORM cannot send in one round trip (the INSERT, the claim, the result write);
- ``waiting``: ``?wait=``, answered from the worker's notification;
- ``idempotency``: Idempotency-Key records (the HTTP replay is the API's, predictions/api/idempotency.py);
- ``reprocess``, ``review``, ``retention``: re-runs, reviewers' corrections, purge and redaction.

Writes go through these functions only. Each state change is a conditional update on the row
(``filter(id=…, status=…).update(…)``), so a task delivered twice changes nothing the second time.
Reads live in predictions/selectors.py.
"""
