import sys

from mmhvae.pretrained import main

sys.exit(main())
