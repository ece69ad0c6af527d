# image-oci-layerfs.bbclass: the "oci" image type of meta-virtualization's
# image-oci class, built by layerfs instead of umoci.
#
# A recipe keeps every OCI_* variable it sets for image-oci; only the
# inherit changes:
#
#   -inherit image-oci
#   +inherit image-oci-layerfs
#
# layerfs reads the same variables (layerfs build --from-env), installs
# packages layers through a union mount of the layers below (only the
# delta lands in each layer), keeps the class's layer cache layout in
# OCI_LAYER_CACHE_DIR (<key16>-<layer>/ with the .oci-layer-cache marker)
# and prints the class's "OCI Cache HIT/MISS" lines, and writes the same
# outputs: ${IMAGE_NAME}${IMAGE_NAME_SUFFIX}-oci, its -oci.tar and
# -oci-dir.tar, and the ${IMAGE_BASENAME}-<tag>-oci links.
#
# Differences a user may notice: OCI_IMAGE_SUBARCH becomes the image's
# variant (umoci cannot set one); the created label and the image date
# follow SOURCE_DATE_EPOCH when it is set; layer tars are reproducible.
#
# layerfs must be on the build host (HOSTTOOLS += "layerfs", or set
# LAYERFS to its path), with /dev/fuse usable by the build user.

OCI_LAYER_MODE ?= "single"
OCI_LAYERS ?= ""
OCI_LAYER_CACHE ?= "1"
OCI_LAYER_CACHE_DIR ?= "${TOPDIR}/oci-layer-cache/${MACHINE}"

OCI_BASE_IMAGE ?= ""
OCI_BASE_IMAGE_TAG ?= "latest"
OCI_IMAGE_TAG ?= "latest"

OCI_IMAGE_ENTRYPOINT ?= ""
OCI_IMAGE_ENTRYPOINT_ARGS ?= ""
OCI_IMAGE_CMD ?= "/bin/sh"
OCI_IMAGE_ENV_VARS ?= ""
OCI_IMAGE_LABELS ?= ""
OCI_IMAGE_PORTS ?= ""
OCI_IMAGE_RUNTIME_UID ?= ""
OCI_IMAGE_WORKINGDIR ?= ""
OCI_IMAGE_STOPSIGNAL ?= ""
OCI_IMAGE_OS ?= "linux"
OCI_IMAGE_ARCH ?= "${@oe.go.map_arch(d.getVar('TARGET_ARCH'))}"
OCI_IMAGE_SUBARCH ?= "${@oci_layerfs_subarch(d)}"

OCI_IMAGE_AUTHOR ?= "${PATCH_GIT_USER_NAME}"
OCI_IMAGE_AUTHOR_EMAIL ?= "${PATCH_GIT_USER_EMAIL}"
OCI_IMAGE_AUTO_LABELS ?= "1"
OCI_IMAGE_REVISION ?= ""
OCI_IMAGE_BRANCH ?= ""
OCI_IMAGE_BUILD_DATE ?= ""

OCI_IMAGE_TAR_OUTPUT ?= "true"

# The layerfs binary, the install command of packages layers, and the
# shared cache tiers (registries). The install command runs in ${WORKDIR}
# with $LAYERFS_ROOT (the layer's mount, holding every layer below) and
# $LAYERFS_PACKAGES; the default is opkg with the configuration do_rootfs
# wrote there for this image's feeds (ipk images; rpm images set it to
# their dnf --installroot "$LAYERFS_ROOT" command). The command is part of
# every packages layer's key: a path relative to ${WORKDIR}, not an
# absolute one, lets other recipes and hosts hit the same entries.
LAYERFS ?= "layerfs"
LAYERFS_INSTALL ?= "opkg -f opkg.conf -o $LAYERFS_ROOT install $LAYERFS_PACKAGES"
LAYERFS_CACHE_FROM ?= ""
LAYERFS_CACHE_TO ?= ""

export OCI_LAYER_MODE
export OCI_LAYERS
export OCI_LAYER_CACHE
export OCI_LAYER_CACHE_DIR
export OCI_BASE_IMAGE
export OCI_BASE_IMAGE_TAG
export OCI_IMAGE_TAG
export OCI_IMAGE_ENTRYPOINT
export OCI_IMAGE_ENTRYPOINT_ARGS
export OCI_IMAGE_CMD
export OCI_IMAGE_ENV_VARS
export OCI_IMAGE_LABELS
export OCI_IMAGE_PORTS
export OCI_IMAGE_RUNTIME_UID
export OCI_IMAGE_WORKINGDIR
export OCI_IMAGE_STOPSIGNAL
export OCI_IMAGE_OS
export OCI_IMAGE_ARCH
export OCI_IMAGE_SUBARCH
export OCI_IMAGE_AUTHOR
export OCI_IMAGE_AUTHOR_EMAIL
export OCI_IMAGE_AUTO_LABELS
export OCI_IMAGE_REVISION
export OCI_IMAGE_BRANCH
export OCI_IMAGE_BUILD_DATE
export OCI_IMAGE_TAR_OUTPUT
export IMGDEPLOYDIR
export IMAGE_NAME
export IMAGE_NAME_SUFFIX
export IMAGE_BASENAME
export DEPLOY_DIR_IMAGE
export MACHINE
export TUNE_PKGARCH
export TARGET_ARCH
export PKGDATA_DIR
export IMAGE_ROOTFS
export TOPDIR
export SOURCE_DATE_EPOCH
export LAYERFS_INSTALL
export LAYERFS_CACHE_FROM
export LAYERFS_CACHE_TO

IMAGE_TYPEDEP:oci = "container"

# A base image named by recipe must be deployed first, as image-oci
# arranges.
python __anonymous() {
    base = d.getVar('OCI_BASE_IMAGE') or ''
    if base and not base.startswith('/') and '/' not in base and '.' not in base.split(':')[0]:
        d.appendVarFlag('do_image_oci', 'depends', ' %s:do_build' % base)
}

# As image-oci does: v7/v6/v5 for arm by TUNE_FEATURES.
def oci_layerfs_subarch(d):
    import re
    if not re.match('arm.*', d.getVar('TARGET_ARCH') or ''):
        return ''
    tune = (d.getVar('TUNE_FEATURES') or '').split()
    for v in ('armv7', 'armv6', 'armv5'):
        if any(t.startswith(v) for t in tune):
            return 'v' + v[4:]
    return ''

# The task runs under pseudo: the owners of IMAGE_ROOTFS live in pseudo's
# database, which layerfs (raw syscalls) cannot see, so tar, run under
# pseudo, hands them over as a stream when directories or files layers
# (or single mode) need the rootfs. Package installs run through the
# layerfs mount, which layerfs adds to PSEUDO_IGNORE_PATHS so that their
# chowns reach it and are recorded.
IMAGE_CMD:oci() {
	cd "${WORKDIR}"
	failed="${WORKDIR}/oci-layerfs-rootfs-tar.failed"
	rm -f "$failed"
	if [ "${OCI_LAYER_MODE}" != "multi" ] || echo " ${OCI_LAYERS} " | grep -Eq ':(directories|files):'; then
		{ tar --numeric-owner -C "${IMAGE_ROOTFS}" -cf - . || touch "$failed"; } | \
			"${LAYERFS}" build --from-env --rootfs-tar -
		if [ -e "$failed" ]; then
			bbfatal "OCI: tar of ${IMAGE_ROOTFS} failed"
		fi
	else
		"${LAYERFS}" build --from-env
	fi
}
