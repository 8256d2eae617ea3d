// The sink writes of one partition loop, one lane per demux substream: writes of a lane run in
// request order (per-key order holds in the sink), lanes run concurrently. Loop thread only.
namespace KFlow.Kafka

open System.Collections.Generic
open System.Threading.Tasks
open KFlow

/// The lanes of sink writes of one partition loop.
/// `ended request error` settles a write that ended (false: it failed, the lane stops);
/// `pending request task` is called for a write that runs on, whose end comes back as SinkDone.
[<Sealed>]
type internal SinkLanes(ended: SinkRequest -> exn option -> bool, pending: SinkRequest -> Task -> unit) =
    // A lane present with a null queue is busy with nothing waiting.
    let lanes = Dictionary<string, Queue<SinkRequest>>()

    let startWrite (request: SinkRequest) =
        try
            match request.Write request.Envelope.Value with
            | null -> Task.CompletedTask
            | t -> t
        with ex ->
            Task.FromException ex

    /// The next write waiting in a lane, or ValueNone (and the lane is idle again).
    let nextInLane (lane: string) =
        match lanes.TryGetValue lane with
        | true, q when not (isNull q) && q.Count > 0 -> ValueSome(q.Dequeue())
        | true, _ ->
            lanes.Remove lane |> ignore
            ValueNone
        | _ -> ValueNone

    /// Runs writes of one lane in order, inline while they complete synchronously; an asynchronous
    /// one leaves the lane busy until its SinkDone arrives.
    let pump (lane: string) (first: SinkRequest) =
        let mutable current = first
        let mutable go = true

        while go do
            let t = startWrite current

            if t.IsCompleted then
                let ok =
                    ended
                        current
                        (if t.IsCompletedSuccessfully then
                             None
                         else
                             Some(taskError t))

                match (if ok then nextInLane lane else ValueNone) with
                | ValueSome next -> current <- next
                | ValueNone -> go <- false
            else
                if not (lanes.ContainsKey lane) then
                    lanes[lane] <- null

                pending current t
                go <- false

    /// Starts a write now if its lane is idle, else queues it behind the lane's writes.
    member _.Enqueue(request: SinkRequest) =
        let lane = request.Substream

        match lanes.TryGetValue lane with
        | true, q ->
            let q =
                if isNull q then
                    let q = Queue()
                    lanes[lane] <- q
                    q
                else
                    q

            q.Enqueue request
        | _ -> pump lane request

    /// A write of the lane ended well: starts the lane's next write, if any.
    member _.Continue(lane: string) =
        match nextInLane lane with
        | ValueSome next -> pump lane next
        | ValueNone -> ()

    /// Forgets every lane (the assignment ended).
    member _.Clear() = lanes.Clear()
