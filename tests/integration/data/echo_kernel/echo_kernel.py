"""A minimal non-Python Jupyter kernel (language "echo"), installed on test hosts as a kernelspec.

A cell's text comes back as its output; ``$NAME`` shows an environment variable and ``!cwd``
the working directory, so tests can see what the kernel was started with. ``!sleep N`` sleeps,
for interrupts (interrupt_mode "message": ipykernel turns an interrupt_request into SIGINT).
"""
import os
import time

from ipykernel.kernelbase import Kernel


class EchoKernel(Kernel):
    implementation = "echo"
    implementation_version = "1.0"
    language = "echo"
    language_version = "1.0"
    language_info = {"name": "echo", "mimetype": "text/plain", "file_extension": ".txt"}
    banner = "echo kernel"

    def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False,
                   *, cell_meta=None, cell_id=None):
        if code.startswith("$"):
            text = os.environ.get(code[1:], "<unset>")
        elif code == "!cwd":
            text = os.getcwd()
        elif code.startswith("!sleep "):
            try:
                time.sleep(float(code.split()[1]))
            except KeyboardInterrupt:
                return {"status": "error", "ename": "KeyboardInterrupt", "evalue": "", "traceback": [],
                        "execution_count": self.execution_count}
            text = "slept"
        else:
            text = code
        if not silent and code:
            self.send_response(self.iopub_socket, "stream", {"name": "stdout", "text": text})
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=EchoKernel)
