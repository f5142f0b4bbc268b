"""bench/files_peer.py - the peer of bench/files.py: a Python `watchdog` loop doing what a
file-transfer channel does, run by the bench's venv (watchdog >= 2.3 installed there).

    python files_peer.py DIR burst|backlog

An Observer on DIR (not recursive) with one handler on `on_closed` (inotify IN_CLOSE_WRITE,
watchdog's FileClosedEvent: the same "its writer closed it" Oxbus waits for), run on
watchdog's own dispatch thread, one file after another: read the file, decode it (UTF-8),
call `work` (the block below, which bench/files.py also pastes into the Oxbus service
module: the same code on both sides), then os.rename it to DIR/processed/. With a watchdog
that takes `event_filter` (>= 4), the watch asks the kernel for close-write events only,
the cheapest a watchdog loop can be.

- burst: watches at once, prints `ready ...`, handles files as their writers close them.
- backlog: prints `ready ...`, waits for `go` on stdin, then starts the watch and handles
  the files already in DIR (os.scandir, oldest change first, as Oxbus orders them), as a
  watchdog loop started on a full folder does.

Events lost (the kernel's queue overflowing: watchdog >= 7's EventsLostEvent): the folder
is scanned again and every file in it handled. Ends at EOF on stdin, printing one JSON
line (files handled, events lost, the watchdog version).
"""
import json, os, sys, threading

# --- work (bench/files.py pastes this block into the Oxbus service) ---
SEEN = []
LINES = [0]


def work(file_name, text):
    """The service's work on one file: note its name, count its lines."""
    SEEN.append(file_name)
    LINES[0] += len(text.splitlines())
# --- end work ---


def main():
    folder, mode = sys.argv[1], sys.argv[2]
    import watchdog.events as ev
    from watchdog.observers import Observer
    from watchdog.version import VERSION_STRING
    if not hasattr(ev, 'FileClosedEvent'):
        raise SystemExit('watchdog %s has no FileClosedEvent (>= 2.3 needed)' % VERSION_STRING)
    lost_cls = getattr(ev, 'EventsLostEvent', None)
    processed = os.path.join(folder, 'processed')
    os.makedirs(processed, exist_ok=True)
    stats = {'handled': 0, 'events_lost': 0, 'watchdog': VERSION_STRING}
    lock = threading.Lock()  # the initial scan (main thread) and the dispatch thread

    def handle(path):
        name = os.path.basename(path)
        if name.startswith('.') or name.endswith('~'):
            return
        with lock:
            try:
                with open(path, 'rb') as f:
                    data = f.read()
            except FileNotFoundError:  # handled already (a scan and an event both saw it)
                return
            work(name, data.decode('utf-8'))
            try:
                os.rename(path, os.path.join(processed, name))
            except FileNotFoundError:
                return
            stats['handled'] += 1

    def scan():
        entries = []
        with os.scandir(folder) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    entries.append((e.stat(follow_symlinks=False).st_mtime_ns, e.path))
        for _, path in sorted(entries):
            handle(path)

    class Handler(ev.FileSystemEventHandler):
        def on_closed(self, event):
            if not event.is_directory:
                handle(os.fsdecode(event.src_path))

        def on_events_lost(self, event):
            stats['events_lost'] += 1
            scan()

    observer = Observer()
    kinds = [ev.FileClosedEvent] + ([lost_cls] if lost_cls else [])
    try:
        observer.schedule(Handler(), folder, recursive=False, event_filter=kinds)
        stats['event_filter'] = True
    except TypeError:  # watchdog < 4: every event, the handler ignores the others
        observer.schedule(Handler(), folder, recursive=False)
        stats['event_filter'] = False
    if mode == 'burst':
        observer.start()
        print('ready', json.dumps(stats), flush=True)
    elif mode == 'backlog':
        print('ready', json.dumps(stats), flush=True)
        if sys.stdin.readline().strip() != 'go':
            return
        observer.start()  # first the watch, then the scan: nothing falls between them
        scan()
    else:
        raise SystemExit('mode: burst or backlog')
    sys.stdin.read()  # until the bench closes our stdin
    observer.stop()
    observer.join()
    stats['seen'] = len(SEEN)
    stats['lines'] = LINES[0]
    print(json.dumps(stats), flush=True)


if __name__ == '__main__':
    main()
