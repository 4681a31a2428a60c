"""The event trail: where every accepted event went, kept for a while.

`recorder.TrailRecorder` is an `Observer`: the broker and the sidecars tell it what
happens, it keeps that in memory for a moment and writes it in batches, off the event
loop, to a `store.TrailStore` (SQLite in the data dir, or memory). `view` turns what is
stored into the path of one event (`fmesh trace`); `live` streams records as they happen
(`fmesh events tail`).
"""
