// The native side of the embedded Kafka cluster: P/Invoke declarations for librdkafka's mock cluster
// API, bound to the very librdkafka instance that Confluent.Kafka loaded (one copy per process).
module internal KFlow.Testing.LibRdKafka

open System
open System.IO
open System.Reflection
open System.Runtime.InteropServices
open System.Text

/// The DllImport name below; the resolver maps it to Confluent.Kafka's loaded library.
[<Literal>]
let private Lib = "librdkafka"

// ---------------------------------------------------------------------------------------------
// Declarations (rdkafka.h, rdkafka_mock.h). rd_kafka_resp_err_t is a C enum: int.

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern nativeint rd_kafka_conf_new()

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern void rd_kafka_conf_destroy(nativeint conf)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern int rd_kafka_conf_set(
    nativeint conf,
    [<MarshalAs(UnmanagedType.LPUTF8Str)>] string name,
    [<MarshalAs(UnmanagedType.LPUTF8Str)>] string value,
    byte[] errstr,
    unativeint errstrSize
)

/// type 0 = RD_KAFKA_PRODUCER. Takes ownership of conf on success only.
[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern nativeint rd_kafka_new(int kafkaType, nativeint conf, byte[] errstr, unativeint errstrSize)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern void rd_kafka_destroy(nativeint rk)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern nativeint rd_kafka_err2str(int err)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern nativeint rd_kafka_mock_cluster_new(nativeint rk, int brokerCount)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern void rd_kafka_mock_cluster_destroy(nativeint mcluster)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern nativeint rd_kafka_mock_cluster_bootstraps(nativeint mcluster)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern int rd_kafka_mock_topic_create(
    nativeint mcluster,
    [<MarshalAs(UnmanagedType.LPUTF8Str)>] string topic,
    int partitionCount,
    int replicationFactor
)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern int rd_kafka_mock_broker_set_down(nativeint mcluster, int brokerId)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern int rd_kafka_mock_broker_set_up(nativeint mcluster, int brokerId)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern int rd_kafka_mock_broker_set_rtt(nativeint mcluster, int brokerId, int rttMs)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern void rd_kafka_mock_push_request_errors_array(
    nativeint mcluster,
    int16 apiKey,
    unativeint count,
    int[] errors
)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern void rd_kafka_mock_clear_request_errors(nativeint mcluster, int16 apiKey)

[<DllImport(Lib, CallingConvention = CallingConvention.Cdecl)>]
extern void rd_kafka_mock_group_initial_rebalance_delay_ms(nativeint mcluster, int delayMs)

// ---------------------------------------------------------------------------------------------
// Helpers

/// A NUL-terminated UTF-8 error buffer filled by librdkafka, as a string.
let errorText (buffer: byte[]) =
    let n = Array.IndexOf(buffer, 0uy)
    Encoding.UTF8.GetString(buffer, 0, (if n < 0 then buffer.Length else n))

/// librdkafka's name for an error code.
let errorName (err: int) =
    match rd_kafka_err2str err with
    | p when p = IntPtr.Zero -> string err
    | p -> Marshal.PtrToStringUTF8 p

// ---------------------------------------------------------------------------------------------
// Loading: one library per process

/// Paths of the shared objects mapped into this process whose name mentions librdkafka (Linux).
let private mappedLibRdKafka () =
    let maps = "/proc/self/maps"

    if File.Exists maps then
        File.ReadAllLines maps
        |> Array.choose (fun line ->
            match line.IndexOf '/' with
            | -1 -> None
            | i -> Some(line.Substring i))
        |> Array.filter (fun path -> Path.GetFileName(path).Contains "librdkafka")
        |> Array.distinct
    else
        [||]

/// Files librdkafka.redist ships next to Confluent.Kafka.dll, in the order Confluent tries them.
let private packagedCandidates () =
    let dir = Path.GetDirectoryName(typeof<Confluent.Kafka.Library>.Assembly.Location)
    let rid = RuntimeInformation.RuntimeIdentifier
    let architecture = RuntimeInformation.ProcessArchitecture
    let arch = architecture.ToString().ToLowerInvariant()

    let os =
        if OperatingSystem.IsWindows() then "win"
        elif OperatingSystem.IsMacOS() then "osx"
        else "linux"

    let names = [
        "librdkafka.so"
        "centos8-librdkafka.so"
        "alpine-librdkafka.so"
        "librdkafka.dylib"
        "librdkafka.dll"
    ]

    [ rid; $"{os}-{arch}" ]
    |> List.distinct
    |> List.collect (fun r -> names |> List.map (fun n -> Path.Combine(dir, "runtimes", r, "native", n)))
    |> List.filter File.Exists

let private loadFailure (detail: string) =
    DllNotFoundException(
        "KFlow.Testing could not load librdkafka, the native library of Confluent.Kafka that holds "
        + "the embedded Kafka cluster. Make sure the librdkafka.redist package is referenced and its "
        + "runtimes/<rid>/native folder is copied next to your assembly; on Linux the default build "
        + "needs libsasl2 (install libsasl2-2 / cyrus-sasl-lib) unless a self-contained build loads. "
        + detail
    )

/// Tries the packaged librdkafka files, first that loads wins.
let private loadPackaged () =
    packagedCandidates ()
    |> List.tryPick (fun path ->
        match NativeLibrary.TryLoad path with
        | true, h -> Some h
        | _ -> None)

/// Helps Confluent.Kafka find a librdkafka that loads when its own probing cannot (e.g. an app whose
/// deps.json does not list the runtimes/<rid>/native folder): a DllImport resolver on its assembly
/// that, when the normal lookup of a librdkafka name fails, loads the first packaged file that
/// does. Skipped when Confluent.Kafka already has a resolver or has already loaded (then it is
/// never asked). Never throws.
let private helpConfluent =
    lazy
        (try
            NativeLibrary.SetDllImportResolver(
                typeof<Confluent.Kafka.Library>.Assembly,
                DllImportResolver(fun name assembly searchPath ->
                    if not (name.Contains "rdkafka") then
                        IntPtr.Zero
                    else
                        match NativeLibrary.TryLoad(name, assembly, searchPath) with
                        | true, h -> h
                        | _ -> loadPackaged () |> Option.defaultValue IntPtr.Zero)
            )
         with :? InvalidOperationException ->
             ())

/// Loads librdkafka the way Confluent.Kafka does, then returns the handle of that same file.
/// 1. Confluent.Kafka loads its library first (it falls back to the self-contained builds itself;
///    `helpConfluent` covers apps where its probing cannot see the packaged files).
/// 2. On Linux, the file it mapped is read from /proc/self/maps; dlopen of an already loaded file
///    returns the existing instance, so both sides share one copy.
/// 3. Elsewhere (or if the map is unreadable), the packaged files are tried in Confluent's order.
let private load () : nativeint =
    let confluentError =
        try
            helpConfluent.Force()
            Confluent.Kafka.Library.Version |> ignore
            None
        with e ->
            Some e

    let fromMaps () =
        mappedLibRdKafka ()
        |> Array.tryPick (fun path ->
            match NativeLibrary.TryLoad path with
            | true, h -> Some h
            | _ -> None)

    let fromPackage = loadPackaged

    let byName () =
        match
            NativeLibrary.TryLoad(
                "librdkafka",
                typeof<Confluent.Kafka.Library>.Assembly,
                Nullable DllImportSearchPath.SafeDirectories
            )
        with
        | true, h -> Some h
        | _ -> None

    match fromMaps () |> Option.orElseWith fromPackage |> Option.orElseWith byName with
    | Some h -> h
    | None ->
        match confluentError with
        | Some e -> raise (loadFailure $"Confluent.Kafka reported: {e.Message}")
        | None -> raise (loadFailure "No librdkafka file next to Confluent.Kafka.dll could be loaded.")

let private handle = lazy (load ())

let private registered =
    lazy
        (NativeLibrary.SetDllImportResolver(
            Assembly.GetExecutingAssembly(),
            DllImportResolver(fun name _ _ -> if name = Lib then handle.Force() else IntPtr.Zero)
        ))

/// Makes the declarations above resolve to Confluent.Kafka's librdkafka; call before any of them.
/// Raises DllNotFoundException with an install hint when no build of librdkafka loads.
let ensureLoaded () =
    registered.Force()
    handle.Force() |> ignore

/// The file this process uses as librdkafka, when it can be told (Linux), for diagnostics.
let loadedPath () =
    ensureLoaded ()
    mappedLibRdKafka () |> Array.tryHead
