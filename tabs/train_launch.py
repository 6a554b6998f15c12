"""The Train tab's "Several machines" box: for the current form, the files that train it on a
cluster (training.launch): accelerate commands per machine, a Slurm script, a SkyPilot task.
Nothing starts here; the files download. The CLI twin:

    python cli.py train --config CONFIG --machines 2 --emit-launch accelerate|slurm|skypilot
"""
from __future__ import annotations

import gradio as gr

from core.access import require_user
from tabs import train_form
from tabs.feedback import shows_errors
from tabs.session import download_path
from training.launch import KINDS, Cluster, emit, with_run_name


def build(form: dict) -> None:
    """Lay out the box under the form (inside its Advanced section) and wire it to `form`."""
    with gr.Accordion("Several machines (accelerate, Slurm, SkyPilot)", open=False):
        gr.Markdown("For more than one machine nothing starts here: download the files into a folder "
                    "`launch-RUN` (the name they use) in the repository's folder, copy it to each machine, "
                    "and run them there. `processes` is per machine. After a failure, run them again with "
                    "`--resume` (`bash machine-0.sh --resume`, `sbatch slurm.sbatch --resume`).")
        with gr.Row():
            machines = gr.Number(2, label="Machines", precision=0, minimum=2, maximum=1024, elem_id="launch-machines")
            kind = gr.Radio(list(KINDS), value="accelerate", label="Launcher", elem_id="launch-kind")
            main_ip = gr.Textbox("MAIN_MACHINE_IP", label="Machine 0's address (accelerate)")
        write = gr.Button("Write the launch files", elem_id="launch-write")
        files = gr.File(label="Launch files", file_count="multiple", interactive=False, elem_id="launch-files")
        shown = gr.Code(label="What each machine runs", language="shell", interactive=False)

    def on_write(inputs: dict, request: gr.Request):
        return launch_files(train_form.named_values(form, inputs), inputs[kind], inputs[machines], inputs[main_ip],
                            request)

    write.click(on_write, {kind, machines, main_ip, *form.values()}, [files, shown], api_name="train_launch_files")


@shows_errors(lambda message: (None, message))
def launch_files(values: dict, kind: str, machines, main_ip: str, request=None) -> tuple[list[str], str]:
    """(paths to download, the launch file's text) for the form's config on `machines` machines."""
    require_user(request, action="writing launch files")
    cfg = with_run_name(train_form.values_to_config(values))
    folder = download_path(request, f"launch-{cfg.output_name}")
    cluster = Cluster(int(machines or 0), cfg.processes, (main_ip or "MAIN_MACHINE_IP").strip()[:200])
    # The files name the config where the user puts them, not where this server wrote them.
    written = emit(cfg, kind, cluster, folder, config_at=f"{folder.name}/train.yaml")
    return [str(path) for path in written], "\n\n".join(path.read_text() for path in written[1:])
