"""Cycles and order in a directed graph of node ids: Tarjan's components, one path per cycle."""

from __future__ import annotations


def kahn(node_ids: list[str], downstream: dict[str, list[str]]) -> list[str]:
    """Node ids in topological order, ties in file order (nodes on a cycle are left out)."""
    waiting = {n: sum(n in downstream[u] for u in node_ids) for n in node_ids}
    order: list[str] = []
    ready = [n for n in node_ids if not waiting[n]]
    while ready:
        current = ready.pop(0)
        order.append(current)
        for n in downstream[current]:
            waiting[n] -= 1
            if not waiting[n]:
                ready.append(n)
    return order


def find_cycles(nodes: list[str], downstream: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one (Tarjan), as a path from its first
    node in `nodes` order back to it: ['a', 'b', 'a']. Nodes that only hang off a cycle are not named."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in downstream[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in downstream[v]:
                components.append(component)

    for v in nodes:
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        first = next(n for n in nodes if n in component)
        cycles.append(_path_back(first, component, downstream))
    return sorted(cycles, key=lambda c: nodes.index(c[0]))


def _path_back(start: str, component: set[str], downstream: dict[str, list[str]]) -> list[str]:
    """The shortest path start -> ... -> start inside a strongly connected component (BFS)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in downstream[v]:
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start, start]
