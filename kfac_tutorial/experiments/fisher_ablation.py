"""The Fisher-flavour ablation over seeds, from the command line:

    python -m kfac_tutorial.experiments.fisher_ablation --model cnn --profile cpu \\
        --tasks diseases,drugs --seeds 0,1,2 --out book/results/ablation_fisher_cnn.json

(:func:`kfac_tutorial.experiments.ablations.main`; the JSON of
:func:`~kfac_tutorial.experiments.ablations.variants_over_seeds` with its command,
package version and git commit.)
"""

import sys

from .ablations import main

if __name__ == "__main__":
    sys.exit(main())
