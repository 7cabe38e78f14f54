class WorkerGroup:
    def __init__(self, runtime, workers):
        self.thread_count = 0
    def start(self, threads):
        pass
    def stop(self, grace):
        pass
