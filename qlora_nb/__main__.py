"`python -m qlora_nb ...` is the `qlora-nb` command (what `accelerate launch -m qlora_nb train ...` runs)."
import sys
from qlora_nb.cli import main

sys.exit(main())
