// The sink writes of one partition loop, one lane per demux substream: writes of a lane start in
// request order, one at a time (or up to the sink's SinkPipelining.InFlight for a sink that keeps the
// order per key itself); lanes run concurrently. Loop thread only.
namespace KFlow.Kafka

open System.Collections.Generic
open System.Threading.Tasks
open KFlow

/// One lane: the writes waiting, how many run, and whether a failure stopped it.
[<Sealed; AllowNullLiteral>]
type internal SinkLane() =
    let mutable waiting: Queue<SinkRequest> = null

    /// Writes not started yet, in request order (made on the first one: a lane whose writes never
    /// queue needs none).
    member _.Waiting =
        if isNull waiting then
            waiting <- Queue()

        waiting

    /// Whether writes wait to start.
    member _.HasWaiting = not (isNull waiting) && waiting.Count > 0
    /// Writes started and not ended.
    member val Running = 0 with get, set
    /// A write failed: nothing more starts until the lanes are cleared.
    member val Stopped = false with get, set

/// The lanes of sink writes of one partition loop.
/// `ended request error` settles a write that ended (false: it failed, the lane stops);
/// `pending request task` is called for a write that runs on, whose end comes back through Ended;
/// `start request` starts a write (on the loop, or where a pipelined write's reservation ended).
[<Sealed>]
type internal SinkLanes
    (
        ended: SinkRequest -> exn option -> bool,
        pending: SinkRequest -> Task -> unit,
        start: SinkRequest -> Task
    ) =
    let lanes = Dictionary<string, SinkLane>()

    let call (request: SinkRequest) =
        try
            match start request with
            | null -> Task.CompletedTask
            | t -> t
        with ex ->
            Task.FromException ex

    /// Starts a write. A pipelined one (InFlight > 1) first reserves its place with the sink, starts
    /// once the reservation is ready, and is released once it ended (however it ended, even if the
    /// loop is gone by then), so a later write of its keys waiting in the sink can go on.
    let startWrite (request: SinkRequest) =
        let pipelining = request.Pipelining

        if pipelining.InFlight <= 1 then
            call request
        else
            let value = request.Envelope.Value

            let ready =
                try
                    match pipelining.Reserve value with
                    | null -> Task.CompletedTask
                    | t -> t
                with ex ->
                    Task.FromException ex

            let t =
                if ready.IsCompletedSuccessfully then
                    call request
                elif ready.IsCompleted then
                    ready
                else
                    ready
                        .ContinueWith(
                            (fun (r: Task) -> if r.IsCompletedSuccessfully then call request else r),
                            TaskContinuationOptions.ExecuteSynchronously
                        )
                        .Unwrap()

            let release () =
                try
                    pipelining.Release value
                with _ ->
                    ()

            if t.IsCompleted then
                release ()
            else
                t.ContinueWith((fun (_: Task) -> release ()), TaskContinuationOptions.ExecuteSynchronously)
                |> ignore

            t

    /// Starts the lane's waiting writes while it has room (inline while they complete synchronously);
    /// forgets the lane once it is idle.
    let pump (name: string) (lane: SinkLane) =
        let mutable go = true

        while go do
            if lane.Stopped || not lane.HasWaiting then
                go <- false
            else
                let next = lane.Waiting.Peek()

                if lane.Running >= max 1 next.Pipelining.InFlight then
                    go <- false
                else
                    lane.Waiting.Dequeue() |> ignore
                    let t = startWrite next

                    if t.IsCompleted then
                        let ok =
                            ended
                                next
                                (if t.IsCompletedSuccessfully then
                                     None
                                 else
                                     Some(taskError t))

                        if not ok then
                            lane.Stopped <- true
                    else
                        lane.Running <- lane.Running + 1
                        pending next t

        if not lane.Stopped && lane.Running = 0 && not lane.HasWaiting then
            lanes.Remove name |> ignore

    /// Lanes whose writes start with `request.Write request.Envelope.Value`.
    new(ended: SinkRequest -> exn option -> bool, pending: SinkRequest -> Task -> unit) =
        SinkLanes(ended, pending, (fun request -> request.Write request.Envelope.Value))

    /// Queues a write in its lane and starts it at once if the lane has room (an idle lane, or fewer
    /// than the sink's InFlight writes running and none waiting before it).
    member _.Enqueue(request: SinkRequest) =
        let name = request.Substream

        match lanes.TryGetValue name with
        | true, lane ->
            lane.Waiting.Enqueue request
            pump name lane
        | _ when request.Pipelining.InFlight <= 1 ->
            // An idle lane of an ordinary sink: no lane is kept while its writes complete at once.
            let t = startWrite request

            if t.IsCompleted then
                if
                    not (
                        ended
                            request
                            (if t.IsCompletedSuccessfully then
                                 None
                             else
                                 Some(taskError t))
                    )
                then
                    lanes[name] <- SinkLane(Stopped = true)
            else
                lanes[name] <- SinkLane(Running = 1)
                pending request t
        | _ ->
            let lane = SinkLane()
            lanes[name] <- lane
            lane.Waiting.Enqueue request
            pump name lane

    /// A write that ran on (see `pending`) ended: settles it with `ended`, stops the lane if that says
    /// so (writes still running finish), else starts the lane's next writes.
    member _.Ended(request: SinkRequest, error: exn option) =
        let ok = ended request error

        match lanes.TryGetValue request.Substream with
        | true, lane ->
            lane.Running <- max 0 (lane.Running - 1)

            if not ok then
                lane.Stopped <- true

            pump request.Substream lane
        | _ -> ()

    /// Writes running in the lane (0 for an unknown lane).
    member _.Running(lane: string) =
        match lanes.TryGetValue lane with
        | true, l -> l.Running
        | _ -> 0

    /// Forgets every lane (the assignment ended).
    member _.Clear() = lanes.Clear()
