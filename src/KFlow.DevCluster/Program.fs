// The dev cluster: an embedded Kafka cluster in its own process for local development, started by
// `dotnet fsi build.fsx dev-cluster` or `dotnet run`; prints BOOTSTRAP=... and runs until stopped.
module KFlow.DevCluster.Program

open System
open System.Runtime.InteropServices
open System.Threading
open KFlow.Testing

/// What the command line asks for.
type Arguments = {
    /// Number of brokers. Default 1.
    Brokers: int
    /// Topics to create: name, partitions, replication factor. Default none.
    Topics: (string * int * int) list
}

let usage =
    """usage: KFlow.DevCluster [--brokers N] [--topic NAME:PARTITIONS[:REPLICATION]]...

Starts librdkafka's mock Kafka cluster on loopback ports, prints BOOTSTRAP=host:port,... on its
own line and runs until Ctrl+C or SIGTERM.

  --brokers N        number of brokers (default 1)
  --topic T:P[:R]    create topic T with P partitions and replication factor R (default 1);
                     repeatable. Other topics are created on first use.
  --help             print this text"""

let private positive (what: string) (text: string) =
    match Int32.TryParse text with
    | true, n when n >= 1 -> Ok n
    | _ -> Error $"{what} must be a whole number >= 1, got '{text}'."

let private topic (spec: string) =
    match spec.Split ':' with
    | [| name; partitions |] when name <> "" ->
        positive $"partitions of topic '{name}'" partitions
        |> Result.map (fun p -> name, p, 1)
    | [| name; partitions; replication |] when name <> "" ->
        positive $"partitions of topic '{name}'" partitions
        |> Result.bind (fun p ->
            positive $"replication factor of topic '{name}'" replication
            |> Result.map (fun r -> name, p, r))
    | _ -> Error $"--topic takes NAME:PARTITIONS[:REPLICATION], got '{spec}'."

/// Parses the command line; Error holds a sentence for the user. `--help` is Error "".
let parse (argv: string list) =
    let rec go args acc =
        match args with
        | [] ->
            let acc = {
                acc with
                    Topics = List.rev acc.Topics
            }

            match acc.Topics |> List.tryFind (fun (_, _, r) -> r > acc.Brokers) with
            | Some(name, _, r) ->
                Error
                    $"topic '{name}' asks for replication factor {r} but there are only {acc.Brokers} brokers."
            | None -> Ok acc
        | "--brokers" :: n :: rest ->
            positive "--brokers" n
            |> Result.bind (fun b -> go rest { acc with Brokers = b })
        | "--topic" :: spec :: rest ->
            topic spec
            |> Result.bind (fun t -> go rest { acc with Topics = t :: acc.Topics })
        | ("--help" | "-h") :: _ -> Error ""
        | [ ("--brokers" | "--topic") as option ] -> Error $"{option} needs a value."
        | other :: _ -> Error $"unknown argument '{other}'."

    go argv { Brokers = 1; Topics = [] }

/// Runs the cluster until SIGINT or SIGTERM, then stops it and returns 0.
let serve (args: Arguments) =
    use cluster =
        EmbeddedKafka.startWith {
            EmbeddedKafkaOptions.Default with
                Brokers = args.Brokers
        }

    for name, partitions, replication in args.Topics do
        cluster.CreateTopic(name, partitions, replication)

    use stop = new ManualResetEventSlim false

    let onSignal (context: PosixSignalContext) =
        context.Cancel <- true // we exit ourselves, after stopping the cluster
        stop.Set()

    use _int = PosixSignalRegistration.Create(PosixSignal.SIGINT, onSignal)
    use _term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, onSignal)

    eprintfn "KFlow dev cluster: %d broker(s)" args.Brokers

    for name, partitions, replication in args.Topics do
        eprintfn "  topic %s: %d partition(s), replication factor %d" name partitions replication

    eprintfn "  fast client settings for tests: see docs/embedded-kafka.md. Ctrl+C or SIGTERM stops it."
    // The one line scripts and tests look for, on stdout, flushed at once.
    Console.Out.WriteLine $"BOOTSTRAP={cluster.BootstrapServers}"
    Console.Out.Flush()
    stop.Wait()
    eprintfn "KFlow dev cluster: stopping."
    0

[<EntryPoint>]
let main argv =
    match parse (List.ofArray argv) with
    | Ok args -> serve args
    | Error "" ->
        printfn "%s" usage
        0
    | Error message ->
        eprintfn "KFlow.DevCluster: %s\n\n%s" message usage
        2
