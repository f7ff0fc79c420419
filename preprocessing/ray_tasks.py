"""Fan a plain function out over Ray tasks with bounded in-flight work (Ray patterns: `ray.wait`, not a loop
of `ray.get`)."""


def run_tasks(fn, calls: list[tuple], resources: dict, label: str = "", progress=None) -> list:
    """Run `fn(*args)` for each call as a Ray task with at most 2x CPUs in flight; results in call order.

    `progress` is an optional `rich.progress.Progress`, advanced once per finished call under `label`.
    """
    import ray

    remote = ray.remote(fn).options(**resources)
    limit = max(2, int(2 * ray.cluster_resources().get("CPU", 2)))
    pending, results, next_call = {}, [None] * len(calls), 0
    task = progress.add_task(label, total=len(calls)) if progress else None
    while next_call < len(calls) or pending:
        while next_call < len(calls) and len(pending) < limit:
            pending[remote.remote(*calls[next_call])] = next_call
            next_call += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
            if progress:
                progress.advance(task)
    return results
