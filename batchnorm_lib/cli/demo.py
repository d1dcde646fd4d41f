"""``demo``: the BatchNorm module page's example on the active backend."""

import numpy as np

from batchnorm_lib import config


def add_parser(sub):
    p = sub.add_parser("demo", help="run the BatchNorm example on the active backend",
                       description="Run the BatchNorm documentation example on the active backend "
                                   "(BATCHNORM_LIB_BACKEND) and print each step.")
    p.add_argument("--seed", type=int, default=1234, help="numpy seed for the random scale")
    p.set_defaults(run=run)
    return p


def run(args):
    from batchnorm_lib.backend import gpuarray
    from batchnorm_lib.modules import BatchNorm

    name = config.get_backend()
    print("batchnorm_lib demo | backend: %s | device: %s" % (name, config.backend_module().device_name()))
    batchsize, insize = 3, 6
    data = gpuarray.to_gpu(np.arange(batchsize * insize).reshape(batchsize, insize).astype(np.float32))
    print("data:\n%s" % data)
    np.random.seed(args.seed)
    bn = BatchNorm(insize)
    bn(data)
    for attr in ("mean", "var", "scale", "bias", "data"):
        print("bn.%s:\n%s" % (attr, getattr(bn, attr)))
    return 0
