// The vocabulary of packages/image: references, OCI descriptors, manifests and image
// configs as the OCI image spec and Docker's schema 2 define them, plus the ports
// (interfaces) its modules implement. Pure types, no I/O.

/** A normalised image reference: docker.io/library/busybox:latest, ghcr.io/o/r@sha256:… */
export interface ImageReference {
  /** Registry host[:port], normalised: "docker.io" (API host registry-1.docker.io). */
  readonly registry: string;
  /** Repository path, with "library/" added for Docker Hub official images. */
  readonly repository: string;
  /** Tag; "latest" when neither tag nor digest is given. */
  readonly tag?: string;
  /** "sha256:<64 hex>" when pinned. */
  readonly digest?: string;
}

export interface Platform {
  readonly os: string; // "linux"
  readonly architecture: string; // "amd64", "arm64"
  readonly variant?: string; // "v8"
}

export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string; // "sha256:<hex>"
  readonly size: number;
  readonly platform?: Platform;
  readonly urls?: readonly string[];
  readonly annotations?: Readonly<Record<string, string>>;
}

export const MediaType = {
  OCI_INDEX: "application/vnd.oci.image.index.v1+json",
  OCI_MANIFEST: "application/vnd.oci.image.manifest.v1+json",
  OCI_CONFIG: "application/vnd.oci.image.config.v1+json",
  OCI_LAYER_TAR: "application/vnd.oci.image.layer.v1.tar",
  OCI_LAYER_GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
  OCI_LAYER_ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
  DOCKER_LIST: "application/vnd.docker.distribution.manifest.list.v2+json",
  DOCKER_MANIFEST: "application/vnd.docker.distribution.manifest.v2+json",
  DOCKER_CONFIG: "application/vnd.docker.container.image.v1+json",
  DOCKER_LAYER_GZIP: "application/vnd.docker.image.rootfs.diff.tar.gzip",
} as const;

export interface Index {
  readonly schemaVersion: 2;
  readonly mediaType?: string;
  readonly manifests: readonly Descriptor[];
}

export interface Manifest {
  readonly schemaVersion: 2;
  readonly mediaType?: string;
  readonly config: Descriptor;
  readonly layers: readonly Descriptor[];
}

/** The parts of the OCI image config mm honours. */
export interface ImageConfigFile {
  readonly architecture: string;
  readonly os: string;
  readonly variant?: string;
  readonly config?: {
    readonly Entrypoint?: readonly string[] | null;
    readonly Cmd?: readonly string[] | null;
    readonly Env?: readonly string[] | null;
    readonly WorkingDir?: string;
    readonly User?: string;
    readonly ExposedPorts?: Readonly<Record<string, object>> | null;
    readonly StopSignal?: string;
  };
  readonly rootfs: { readonly type: "layers"; readonly diff_ids: readonly string[] };
}

/** What `pull` / `import` leave behind: a resolved, verified image in the content store. */
export interface PulledImage {
  readonly reference: string; // as the user wrote it, normalised
  readonly digest: string; // manifest digest (the image's identity)
  readonly manifest: Manifest;
  readonly config: ImageConfigFile;
  readonly configDigest: string;
}

/** Progress events (the CLI renders bars on a TTY, JSON lines with --json). */
export type PullEvent =
  | { readonly type: "resolved"; readonly reference: string; readonly digest: string; readonly layers: number }
  | { readonly type: "layer-start"; readonly digest: string; readonly size: number; readonly cached: boolean }
  | { readonly type: "layer-progress"; readonly digest: string; readonly bytes: number; readonly size: number }
  | { readonly type: "layer-done"; readonly digest: string }
  | { readonly type: "retry"; readonly what: string; readonly attempt: number; readonly reason: string }
  | { readonly type: "done"; readonly digest: string };
